"""Walk a corpus folder: what is included, in what order, and what is left out and why."""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from .documents import Document, Skipped
from .extract import EXTRACTED_SUFFIXES, ExtractionError, extract
from .rules import BINARY_SUFFIXES, LOCK_FILES, PRUNED_DIRECTORIES, SECRET_PATTERNS

DEFAULT_MAX_FILE_BYTES = 2 * 1024 * 1024
_SNIFF_BYTES = 8192

_SECRETS = GitIgnoreSpec.from_lines(SECRET_PATTERNS)


@dataclass(frozen=True)
class ScanOptions:
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # for text, and for text extracted
    max_extracted_file_bytes: int = 50 * 1024 * 1024  # a PDF or DOCX file itself
    include_secrets: bool = False  # only ever set by an explicit user flag


@dataclass(frozen=True)
class ScanResult:
    documents: tuple[Document, ...]
    skipped: tuple[Skipped, ...]
    reused: int  # documents taken from the previous scan without reading


class CorpusNotFoundError(FileNotFoundError):
    pass


@functools.lru_cache(maxsize=1 << 16)
def is_secret(rel_path: str) -> bool:
    # Cached: a watched folder is rescanned after every save, and its paths barely change.
    return _SECRETS.match_file(rel_path)


class _IgnoreStack:
    """.gitignore files apply to their own folder and below."""

    def __init__(self) -> None:
        self._specs: list[tuple[str, GitIgnoreSpec]] = []

    def push_folder(self, root: Path, rel_dir: str) -> None:
        gitignore = root / rel_dir / ".gitignore" if rel_dir else root / ".gitignore"
        try:
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return
        self._specs.append((rel_dir, GitIgnoreSpec.from_lines(lines)))

    def ignored(self, rel_path: str, is_dir: bool) -> bool:
        for base, spec in self._specs:
            if base and not rel_path.startswith(base + "/"):
                continue
            relative = rel_path[len(base) + 1 :] if base else rel_path
            if spec.match_file(relative + "/" if is_dir else relative):
                return True
        return False


def _walk(root: Path, options: ScanOptions) -> Iterator[tuple[str, os.stat_result] | Skipped]:
    ignores = _IgnoreStack()
    real_root = root.resolve()

    def visit(rel_dir: str) -> Iterator[tuple[str, os.stat_result] | Skipped]:
        ignores.push_folder(root, rel_dir)
        folder = root / rel_dir if rel_dir else root
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(rel_dir or ".", f"folder cannot be read: {exc.strerror}")
            return
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
                else:
                    yield from visit(rel)
                continue
            if entry.name == ".gitignore":
                continue
            if not options.include_secrets and is_secret(rel):
                yield Skipped(rel, "secret file (never sent by default)")
                continue
            if ignores.ignored(rel, is_dir=False):
                yield Skipped(rel, "ignored by .gitignore")
                continue
            if is_link:
                try:
                    target = Path(entry.path).resolve(strict=True)
                except (OSError, RuntimeError):
                    yield Skipped(rel, "broken or looping symlink")
                    continue
                if not target.is_relative_to(real_root):
                    yield Skipped(rel, "symlink to a file outside the corpus")
                    continue
                if target.is_dir():
                    yield Skipped(rel, "symlink to a folder (not followed)")
                    continue
            try:
                info = entry.stat(follow_symlinks=True)
            except OSError as exc:
                yield Skipped(rel, f"cannot be read: {exc.strerror}")
                continue
            if not stat.S_ISREG(info.st_mode):
                yield Skipped(rel, "not a regular file")
                continue
            yield rel, info

    yield from visit("")


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
        return f"larger than the {options.max_file_bytes:,}-byte limit ({size:,} bytes)"
    if size == 0:
        return "empty file"
    return None


def _read_text(path: Path) -> str | Skipped:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return Skipped("", f"cannot be read: {exc.strerror}")
    if b"\x00" in raw[:_SNIFF_BYTES]:
        return Skipped("", "binary content")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Skipped("", "not UTF-8 text")
    if not text.strip():
        return Skipped("", "blank file")
    return text


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
        rel, info = item
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
        if os.path.splitext(rel)[1].lower() in EXTRACTED_SUFFIXES:
            try:
                extracted = extract(root / rel)
            except ExtractionError as exc:
                skipped.append(Skipped(rel, str(exc)))
                continue
            if len(extracted.text.encode()) > options.max_file_bytes:
                skipped.append(Skipped(rel, "extracted text larger than the limit"))
                continue
            text: str | Skipped = extracted.text
            pages = extracted.page_lines
        else:
            text = _read_text(root / rel)
        if isinstance(text, Skipped):
            skipped.append(Skipped(rel, text.reason))
            continue
        documents.append(
            Document.from_text(rel, text, size=info.st_size, mtime_ns=info.st_mtime_ns, pages=pages)
        )
    documents.sort(key=lambda d: d.path)
    skipped.sort(key=lambda s: s.path)
    return ScanResult(tuple(documents), tuple(skipped), reused)
