"""Paths a client names: accepted only as relative paths inside the corpus. Pure."""

from __future__ import annotations

import unicodedata
from pathlib import PurePosixPath, PureWindowsPath
from urllib.parse import unquote

from corpus_cache.errors import InvalidArgumentError

# Characters that read as a slash or a backslash and are neither (NFKC keeps them).
_SLASH_LOOKALIKES = str.maketrans(
    dict.fromkeys("\u2044\u2215\u2571\u29f8", "/") | dict.fromkeys("\u2216\u29f5\u29f9", "\\")
)


def corpus_relative(path: str) -> str:
    """Normalise a client-supplied path, refusing anything that could leave the corpus.

    Documents are only ever looked up by name in the snapshot, so no spelling can reach a
    file outside; a path that merely reads as one (`%2e%2e/`, full-width `．．／`, a division
    slash) is refused all the same, with a clearer error than "not a document"."""
    cleaned = _relative(path)
    reads_as = unicodedata.normalize("NFKC", unquote(path)).translate(_SLASH_LOOKALIKES)
    if reads_as != path:
        try:
            _relative(reads_as)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"path {path!r} reads as {reads_as!r}: {exc}") from None
    return cleaned


def _relative(path: str) -> str:
    if not path or not path.strip():
        raise InvalidArgumentError("path is empty: pass a path from list_documents")
    if "\x00" in path:
        raise InvalidArgumentError("path contains a NUL byte")
    if path.startswith(("/", "\\", "~")) or PureWindowsPath(path).drive:
        raise InvalidArgumentError(
            f"path {path!r} is absolute: pass a path relative to the corpus, "
            "as list_documents shows it"
        )
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if ".." in parts:
        raise InvalidArgumentError(f"path {path!r} is outside the corpus: '..' is not allowed")
    cleaned = [part for part in parts if part not in ("", ".")]
    if not cleaned:
        raise InvalidArgumentError("path names the corpus folder itself, not a document")
    return "/".join(cleaned)


def normal_form(path: str) -> str:
    """The composed (NFC) spelling of a path, as clients usually send it, whichever form
    the file system keeps: two paths that read the same compare equal."""
    return unicodedata.normalize("NFC", path)
