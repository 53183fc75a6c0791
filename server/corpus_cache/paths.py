"""Paths a client names: accepted only as relative paths inside the corpus. Pure."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

from .errors import InvalidArgumentError


def corpus_relative(path: str) -> str:
    """Normalise a client-supplied path, refusing anything that could leave the corpus."""
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
