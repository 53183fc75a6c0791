"""Walk a corpus folder: what is included, in what order, and what is left out and why."""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from pathspec import GitIgnoreSpec

from .beneath import DIRECTORY_FLAGS, CorpusRoot, identity, open_beneath
from .documents import Document, Skipped
from .encodings import Decoded, NotTextError, decode
from .extract import (
    EXTRACTED_SUFFIXES,
    MAX_EXTRACTED_FILE_BYTES,
    ExtractionError,
    ExtractionLimits,
    extract_data,
)
from .names import name_problem, shown
from .reading import UnreadableError, kind_of, read_beneath
from .rules import BINARY_SUFFIXES, LOCK_FILES, PRUNED_DIRECTORIES
from .secret_content import describe, find_secrets
from .secret_names import is_secret

DEFAULT_MAX_FILE_BYTES = 2 * 1024 * 1024
_MAX_GITIGNORE_BYTES = 1024 * 1024
RAISE_THE_LIMIT = "raise it with --max-file-bytes or CORPUS_CACHE_MAX_FILE_BYTES"

log = logging.getLogger(__name__)

__all__ = ["CorpusRoot", "ScanOptions", "ScanResult", "is_secret", "scan"]


@dataclass(frozen=True)
class ScanOptions:
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # for text, and for text extracted
    max_extracted_file_bytes: int = MAX_EXTRACTED_FILE_BYTES  # a PDF or DOCX file itself
    include_secrets: bool = False  # only ever set by an explicit user flag
    allow_secret_content: bool = False  # likewise: files whose text holds a key or token
    # Likewise: files with several names, some of which the scan did not meet in the corpus.
    allow_hard_links: bool = False


@dataclass(frozen=True)
class ScanResult:
    documents: tuple[Document, ...]
    skipped: tuple[Skipped, ...]
    reused: int  # documents taken from the previous scan without reading


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

    def push_folder(self, folder_fd: int, rel_dir: str, full_path: Path) -> str | None:
        """Apply the .gitignore of the open folder `folder_fd`; the reason, if it cannot be
        read."""
        try:
            raw, _ = read_beneath(folder_fd, ".gitignore", _MAX_GITIGNORE_BYTES,
                                  full_path=full_path)  # fmt: skip
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


@dataclass(frozen=True)
class _Listed:
    """A file the listing found, that no rule by name leaves out."""

    rel: str
    info: os.stat_result  # as listed, of the name itself (a symlink's own status)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.info.st_mode)


def _open_folder(root: CorpusRoot, rel_dir: str) -> int:
    if not rel_dir:  # a descriptor of its own: listing moves a descriptor's offset
        return os.open(".", DIRECTORY_FLAGS, dir_fd=root.fd)
    return open_beneath(root.fd, rel_dir, DIRECTORY_FLAGS)


def _walk(root: CorpusRoot, options: ScanOptions) -> Iterator[_Listed | Skipped]:
    """Each file to read (or symlink to look at), and what is left out on the way. Every
    folder is opened beneath the root through no symlink, and must be the folder its parent
    listed. Depth first with a stack of its own: no nesting is too deep for it."""
    ignores = _IgnoreStack()
    folders: list[tuple[str, tuple[int, int] | None]] = [("", None)]
    while folders:
        rel_dir, listed = folders.pop()
        subfolders: list[tuple[str, tuple[int, int]]] = []
        try:
            folder_fd = _open_folder(root, rel_dir)
        except OSError as exc:
            why = "replaced by a symlink" if exc.errno == errno.ELOOP else exc.strerror
            yield Skipped(rel_dir or ".", f"folder cannot be read: {why}")
            continue
        try:
            if listed is not None and identity(os.fstat(folder_fd)) != listed:
                yield Skipped(rel_dir + "/", "folder replaced by another while being read")
                continue
            # Status read through the folder's descriptor: fstatat, never following a link.
            with os.scandir(folder_fd) as listing:
                entries = sorted(listing, key=lambda e: e.name)
            named = [(e, _status(e)) for e in entries]
            if any(e.name == ".gitignore" for e in entries):
                gitignore = f"{rel_dir}/.gitignore" if rel_dir else ".gitignore"
                info = next(i for e, i in named if e.name == ".gitignore")
                if isinstance(info, os.stat_result) and stat.S_ISLNK(info.st_mode):
                    problem: str | None = (
                        "a symlink, which git does not follow for .gitignore: "
                        "its rules are not applied"
                    )
                else:
                    problem = ignores.push_folder(folder_fd, rel_dir, root.path / gitignore)
                if problem is not None:
                    yield Skipped(gitignore, problem)
        except OSError as exc:
            yield Skipped(rel_dir or ".", f"folder cannot be read: {exc.strerror}")
            continue
        finally:
            os.close(folder_fd)
        for entry, info in named:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if isinstance(info, str):
                yield Skipped(rel, info)
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.name in PRUNED_DIRECTORIES:
                    continue  # tools' state, not documents: pruned silently
                if not options.include_secrets and is_secret(rel + "/"):
                    yield Skipped(rel + "/", "secret folder (never sent by default)")
                elif ignores.ignored(rel, is_dir=True):
                    yield Skipped(rel + "/", "ignored by .gitignore")
                elif (problem := name_problem(entry.name)) is not None:
                    yield Skipped(rel + "/", problem)
                else:
                    subfolders.append((rel, identity(info)))
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
            if not stat.S_ISREG(info.st_mode) and not stat.S_ISLNK(info.st_mode):
                yield Skipped(rel, f"not a regular file ({kind_of(info.st_mode)})")
                continue
            yield _Listed(rel, info)
        folders.extend(reversed(subfolders))


def _status(entry: os.DirEntry[str]) -> os.stat_result | str:
    """The entry's own status (a symlink's, not its target's), or why it has none."""
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return "vanished before it could be read"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"


def _link_verdict(
    root: CorpusRoot,
    listed: _Listed,
    served: Mapping[str, Document],
    left_out: Mapping[str, str],
    options: ScanOptions,
) -> Document | Skipped:
    """A symlink is never opened: it is served only as another name of a document the scan
    admitted under its own path, by every rule (inside the corpus, not ignored, not in a
    pruned folder, not secret by name or content, not too large, ...), with that text.
    Nothing is ever read through it, so re-pointing it can at worst name another such
    document."""
    rel = listed.rel
    real_root = Path(os.path.realpath(root.path))
    try:
        target = (root.path / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return Skipped(rel, "broken or looping symlink")
    if not target.is_relative_to(real_root):
        kind = "folder" if target.is_dir() else "file"
        return Skipped(rel, f"symlink to a {kind} outside the corpus")
    target_rel = target.relative_to(real_root).as_posix()
    if not options.include_secrets and is_secret(target_rel):
        return Skipped(rel, "symlink to a secret file (never sent by default)")
    if target.is_dir():
        return Skipped(rel, "symlink to a folder (not followed)")
    document = served.get(target_rel)
    if document is None:
        reason = left_out.get(target_rel, "ignored, or in a folder that is never read")
        return Skipped(rel, f"symlink to a file that is left out of the corpus: {reason}")
    return replace(document, path=rel)


def _hard_link_problem(info: os.stat_result, names_found: int, options: ScanOptions) -> str | None:
    if info.st_nlink <= 1 or options.allow_hard_links or names_found >= info.st_nlink:
        return None
    return (
        f"a hard link, and not all of its {info.st_nlink} names are files the corpus serves: "
        "another may be outside the corpus, ignored or secret (--allow-hard-links serves it)"
    )


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


def _read_text(data: bytes) -> Decoded | Skipped:
    """Text by the policy of encodings.py."""
    try:
        decoded = decode(data)
    except NotTextError as exc:
        return Skipped("", str(exc))
    if not decoded.text.strip():
        return Skipped("", "blank file")
    return decoded


def scan(
    root: Path | CorpusRoot,
    options: ScanOptions | None = None,
    previous: Mapping[str, Document] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    """Read the corpus. A file whose size and mtime match `previous` is not read again.
    `progress(done, total)`: called as the files listed are read.

    `root`: the corpus folder, pinned (a `CorpusRoot` the caller keeps), or a path opened
    for this scan only. Raises CorpusNotFoundError when the folder is gone, and
    CorpusReplacedError when its path names another folder, before or after the scan: a
    scan of a folder replaced meanwhile is not kept."""
    pinned = root if isinstance(root, CorpusRoot) else CorpusRoot(root)
    try:
        pinned.check()
        result = _scan(pinned, options or ScanOptions(), previous or {}, progress)
        pinned.check()
    finally:
        if pinned is not root:
            pinned.close()
    return result


def _scan(
    root: CorpusRoot,
    options: ScanOptions,
    previous: Mapping[str, Document],
    progress: Callable[[int, int], None] | None = None,
) -> ScanResult:
    documents: list[Document] = []
    skipped: list[Skipped] = []
    reused = 0
    listed: list[_Listed] = []
    for item in _walk(root, options):
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            listed.append(item)
    # Names of one file met in the corpus (a file with several is a hard link).
    names = Counter(identity(f.info) for f in listed if not f.is_link)
    links: list[_Listed] = []
    for done, item in enumerate(listed):
        if progress is not None and done % 100 == 0:
            progress(done, len(listed))
        if item.is_link:
            links.append(item)
            continue
        rel, info = item.rel, item.info
        problem = _hard_link_problem(info, names[identity(info)], options)
        if problem is not None:
            skipped.append(Skipped(rel, problem))
            continue
        known = previous.get(rel)
        if known is not None and (known.size, known.mtime_ns) == (info.st_size, info.st_mtime_ns):
            documents.append(known)  # admitted before, by these same rules
            reused += 1
            continue
        read = _read(root, item, options, names[identity(info)])
        if isinstance(read, Skipped):
            skipped.append(read)
        else:
            documents.append(read)
    served = {d.path: d for d in documents}
    left_out = {s.path: s.reason for s in skipped}
    for link in links:
        verdict = _link_verdict(root, link, served, left_out, options)
        if isinstance(verdict, Skipped):
            skipped.append(verdict)
        elif previous.get(link.rel) == verdict:
            documents.append(previous[link.rel])  # the same text under the same name
            reused += 1
        else:
            documents.append(verdict)
    documents.sort(key=lambda d: d.path)
    # Left-out names are shown escaped: one may hold a line break or bytes that are not UTF-8.
    skipped = sorted((Skipped(shown(s.path), s.reason) for s in skipped), key=lambda s: s.path)
    return ScanResult(tuple(documents), tuple(skipped), reused)


def _read(root: CorpusRoot, item: _Listed, options: ScanOptions, names: int) -> Document | Skipped:
    """The document of a listed file, opened beneath the root, or why it is left out."""
    rel = item.rel
    reason = _reason_to_skip_by_name(rel, item.info.st_size, options)
    if reason is not None:
        return Skipped(rel, reason)
    suffix = os.path.splitext(rel)[1].lower()
    extracted_kind = suffix in EXTRACTED_SUFFIXES
    limit = options.max_extracted_file_bytes if extracted_kind else options.max_file_bytes
    try:
        data, info = read_beneath(root.fd, rel, limit, full_path=root.path / rel,
                                  listed=identity(item.info))  # fmt: skip
    except UnreadableError as exc:
        return Skipped(rel, str(exc))
    # A name may have been added since the listing: the open file's own count decides.
    problem = _hard_link_problem(info, names, options)
    if problem is not None:
        return Skipped(rel, problem)
    pages: tuple[int, ...] = ()
    note = ""
    if extracted_kind:
        try:
            limits = ExtractionLimits(max_text_bytes=options.max_file_bytes)
            extracted = extract_data(data, suffix, limits)
        except ExtractionError as exc:
            return Skipped(rel, str(exc))
        if len(extracted.text.encode()) > options.max_file_bytes:
            limit = options.max_file_bytes
            return Skipped(
                rel, f"extracted text larger than the {limit:,}-byte limit; {RAISE_THE_LIMIT}"
            )
        text = extracted.text
        pages = extracted.page_lines
    else:
        decoded = _read_text(data)
        if isinstance(decoded, Skipped):
            return Skipped(rel, decoded.reason)
        text, note = decoded.text, decoded.note
    # The size and time as listed: if the file changed before it was read, they no longer
    # match, and the next rescan reads it again rather than trusting what it saw.
    listed = item.info
    if not options.allow_secret_content and (found := find_secrets(text)):
        what = describe(found)
        _warn_secret_content(str(root.path / rel), listed.st_size, listed.st_mtime_ns, what)
        return Skipped(rel, f"secret content: {what} (never sent by default)")
    return Document.from_text(
        rel, text, size=listed.st_size, mtime_ns=listed.st_mtime_ns, pages=pages,
        encoding_note=note,
    )  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _warn_secret_content(path: str, size: int, mtime_ns: int, what: str) -> None:
    # Once per version of the file, not on every rescan the watcher makes.
    log.warning(
        "left out %s: it holds %s. Remove the secret, or pass --allow-secret-content "
        "to send files like it to the API",
        path, what,
    )  # fmt: skip
