"""Walk a corpus folder: what is included, in what order, and what is left out and why."""

from __future__ import annotations

import functools
import logging
import os
import stat
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from ..errors import CorpusNotFoundError
from .documents import Document, Skipped
from .encodings import Decoded, NotTextError, decode
from .extract import EXTRACTED_SUFFIXES, MAX_EXTRACTED_FILE_BYTES, ExtractionError, extract_data
from .names import name_problem, shown
from .reading import UnreadableError, kind_of, read_regular_file
from .rules import BINARY_SUFFIXES, LOCK_FILES, PRUNED_DIRECTORIES, SECRET_PATTERNS
from .secret_content import describe, find_secrets

DEFAULT_MAX_FILE_BYTES = 2 * 1024 * 1024
_MAX_GITIGNORE_BYTES = 1024 * 1024
RAISE_THE_LIMIT = "raise it with --max-file-bytes or CORPUS_CACHE_MAX_FILE_BYTES"

_SECRETS = GitIgnoreSpec.from_lines(SECRET_PATTERNS)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanOptions:
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # for text, and for text extracted
    max_extracted_file_bytes: int = MAX_EXTRACTED_FILE_BYTES  # a PDF or DOCX file itself
    include_secrets: bool = False  # only ever set by an explicit user flag
    allow_secret_content: bool = False  # likewise: files whose text holds a key or token


@dataclass(frozen=True)
class ScanResult:
    documents: tuple[Document, ...]
    skipped: tuple[Skipped, ...]
    reused: int  # documents taken from the previous scan without reading


@functools.lru_cache(maxsize=1 << 16)
def is_secret(rel_path: str) -> bool:
    # Cached: a watched folder is rescanned after every save, and its paths barely change.
    # Look-alikes fold away: `.ENV`, `ID_RSA`, a full-width `．env`, `.e<zero-width space>nv`.
    folded = unicodedata.normalize("NFKC", rel_path).casefold()
    return _SECRETS.match_file("".join(c for c in folded if unicodedata.category(c) != "Cf"))


def _gitignore_rules(lines: list[str]) -> tuple[GitIgnoreSpec, list[str]]:
    """The rules of a .gitignore, and the lines that are not patterns (a lone backslash):
    git skips those and applies the others, and so does the scan."""
    try:
        return GitIgnoreSpec.from_lines(lines), []
    except ValueError:
        pass
    kept: list[str] = []
    unreadable: list[str] = []
    for line in lines:
        try:
            GitIgnoreSpec.from_lines([line])
        except ValueError:
            unreadable.append(line)
        else:
            kept.append(line)
    return GitIgnoreSpec.from_lines(kept), unreadable


class _IgnoreStack:
    """.gitignore files apply to their own folder and below."""

    def __init__(self) -> None:
        self._specs: list[tuple[str, GitIgnoreSpec]] = []

    def push_folder(self, root: Path, rel_dir: str) -> str | None:
        """Apply the folder's .gitignore; the reason, if it cannot be read."""
        gitignore = root / rel_dir / ".gitignore" if rel_dir else root / ".gitignore"
        if gitignore.is_symlink():
            return "a symlink, which git does not follow for .gitignore: its rules are not applied"
        try:
            raw = read_regular_file(gitignore, _MAX_GITIGNORE_BYTES, follow_symlinks=False)
        except UnreadableError as exc:
            return f"{exc}; its rules are not applied"
        lines = raw.decode("utf-8", errors="replace").splitlines()
        spec, unreadable = _gitignore_rules(lines)
        self._specs.append((rel_dir, spec))
        if unreadable:
            return f"rule {unreadable[0]!r} is not a pattern git reads, so it is not applied"
        return None

    def ignored(self, rel_path: str, is_dir: bool) -> bool:
        for base, spec in self._specs:
            if base and not rel_path.startswith(base + "/"):
                continue
            relative = rel_path[len(base) + 1 :] if base else rel_path
            if spec.match_file(relative + "/" if is_dir else relative):
                return True
        return False


def _walk(root: Path, options: ScanOptions) -> Iterator[tuple[str, os.stat_result, bool] | Skipped]:
    """(path, stat, is a symlink) of each file to read, and what is left out on the way.
    Depth first with a stack of its own: no nesting is too deep for it."""
    ignores = _IgnoreStack()
    real_root = root.resolve()
    folders = [""]
    while folders:
        rel_dir = folders.pop()
        subfolders: list[str] = []
        folder = root / rel_dir if rel_dir else root
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(rel_dir or ".", f"folder cannot be read: {exc.strerror}")
            continue
        if any(entry.name == ".gitignore" for entry in entries):
            problem = ignores.push_folder(root, rel_dir)
            if problem is not None:
                yield Skipped(f"{rel_dir}/.gitignore" if rel_dir else ".gitignore", problem)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                yield Skipped(rel, f"cannot be read: {exc.strerror}")
                continue
            if is_dir:
                if entry.name in PRUNED_DIRECTORIES:
                    continue  # tools' state, not documents: pruned silently
                if not options.include_secrets and is_secret(rel + "/"):
                    yield Skipped(rel + "/", "secret folder (never sent by default)")
                elif ignores.ignored(rel, is_dir=True):
                    yield Skipped(rel + "/", "ignored by .gitignore")
                elif (problem := name_problem(entry.name)) is not None:
                    yield Skipped(rel + "/", problem)
                else:
                    subfolders.append(rel)
                continue
            if entry.name == ".gitignore":
                continue
            if not options.include_secrets and is_secret(rel):
                yield Skipped(rel, "secret file (never sent by default)")
                continue
            if ignores.ignored(rel, is_dir=False):
                yield Skipped(rel, "ignored by .gitignore")
                continue
            problem = name_problem(entry.name)
            if problem is not None:
                yield Skipped(rel, problem)
                continue
            if is_link:
                try:
                    target = Path(entry.path).resolve(strict=True)
                except (OSError, RuntimeError):
                    yield Skipped(rel, "broken or looping symlink")
                    continue
                if not target.is_relative_to(real_root):
                    kind = "folder" if target.is_dir() else "file"
                    yield Skipped(rel, f"symlink to a {kind} outside the corpus")
                    continue
                if not options.include_secrets and is_secret(
                    target.relative_to(real_root).as_posix()
                ):
                    yield Skipped(rel, "symlink to a secret file (never sent by default)")
                    continue
                if target.is_dir():
                    yield Skipped(rel, "symlink to a folder (not followed)")
                    continue
            try:
                info = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                yield Skipped(rel, "vanished before it could be read")
                continue
            except OSError as exc:
                yield Skipped(rel, f"cannot be read: {exc.strerror}")
                continue
            if not stat.S_ISREG(info.st_mode):
                yield Skipped(rel, f"not a regular file ({kind_of(info.st_mode)})")
                continue
            yield rel, info, is_link
        folders.extend(reversed(subfolders))


def _reason_to_skip_by_name(rel: str, size: int, options: ScanOptions) -> str | None:
    name = rel.rpartition("/")[2]
    if name in LOCK_FILES:
        return "lock file"
    suffix = os.path.splitext(name)[1].lower()
    if suffix in BINARY_SUFFIXES:
        return "binary file type"
    if suffix in EXTRACTED_SUFFIXES:
        limit = options.max_extracted_file_bytes
        if size > limit:
            return f"larger than the {limit:,}-byte limit for PDF and DOCX ({size:,} bytes)"
    elif size > options.max_file_bytes:
        limit = options.max_file_bytes
        return f"larger than the {limit:,}-byte limit ({size:,} bytes); {RAISE_THE_LIMIT}"
    if size == 0:
        return "empty file"
    return None


def _read_text(path: Path, limit: int, is_link: bool) -> Decoded | Skipped:
    """Text by the policy of encodings.py; a file found not to be a symlink is not followed
    if it has become one."""
    try:
        decoded = decode(read_regular_file(path, limit, follow_symlinks=is_link))
    except (UnreadableError, NotTextError) as exc:
        return Skipped("", str(exc))
    if not decoded.text.strip():
        return Skipped("", "blank file")
    return decoded


def scan(
    root: Path,
    options: ScanOptions | None = None,
    previous: Mapping[str, Document] | None = None,
) -> ScanResult:
    """Read the corpus. A file whose size and mtime match `previous` is not read again."""
    options = options or ScanOptions()
    if not root.is_dir():
        raise CorpusNotFoundError(f"corpus folder not found: {root}")
    previous = previous or {}
    documents: list[Document] = []
    skipped: list[Skipped] = []
    reused = 0
    for item in _walk(root, options):
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        rel, info, is_link = item
        known = previous.get(rel)
        if known is not None and (known.size, known.mtime_ns) == (info.st_size, info.st_mtime_ns):
            documents.append(known)  # admitted before, by these same rules
            reused += 1
            continue
        reason = _reason_to_skip_by_name(rel, info.st_size, options)
        if reason is not None:
            skipped.append(Skipped(rel, reason))
            continue
        pages: tuple[int, ...] = ()
        note = ""
        suffix = os.path.splitext(rel)[1].lower()
        if suffix in EXTRACTED_SUFFIXES:
            try:
                data = read_regular_file(
                    root / rel, options.max_extracted_file_bytes, follow_symlinks=is_link
                )
                extracted = extract_data(data, suffix)
            except (UnreadableError, ExtractionError) as exc:
                skipped.append(Skipped(rel, str(exc)))
                continue
            if len(extracted.text.encode()) > options.max_file_bytes:
                limit = options.max_file_bytes
                reason = f"extracted text larger than the {limit:,}-byte limit; {RAISE_THE_LIMIT}"
                skipped.append(Skipped(rel, reason))
                continue
            text: str | Skipped = extracted.text
            pages = extracted.page_lines
        else:
            read = _read_text(root / rel, options.max_file_bytes, is_link)
            text = read if isinstance(read, Skipped) else read.text
            note = "" if isinstance(read, Skipped) else read.note
        if isinstance(text, Skipped):
            skipped.append(Skipped(rel, text.reason))
            continue
        if not options.allow_secret_content and (found := find_secrets(text)):
            what = describe(found)
            skipped.append(Skipped(rel, f"secret content: {what} (never sent by default)"))
            _warn_secret_content(str(root / rel), info.st_size, info.st_mtime_ns, what)
            continue
        document = Document.from_text(
            rel, text, size=info.st_size, mtime_ns=info.st_mtime_ns, pages=pages,
            encoding_note=note,
        )  # fmt: skip
        documents.append(document)
    documents.sort(key=lambda d: d.path)
    # Left-out names are shown escaped: one may hold a line break or bytes that are not UTF-8.
    skipped = sorted((Skipped(shown(s.path), s.reason) for s in skipped), key=lambda s: s.path)
    return ScanResult(tuple(documents), tuple(skipped), reused)


@functools.lru_cache(maxsize=1024)
def _warn_secret_content(path: str, size: int, mtime_ns: int, what: str) -> None:
    # Once per version of the file, not on every rescan the watcher makes.
    log.warning(
        "left out %s: it holds %s. Remove the secret, or pass --allow-secret-content "
        "to send files like it to the API",
        path, what,
    )  # fmt: skip
