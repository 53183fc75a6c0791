"""Walk a corpus folder: what is included, in what order, and what is left out and why."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
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
    # Symlinks listed: what each serves depends on other files, so each rescan looks again.
    links: tuple[str, ...] = ()
    # Files with several names: whether each is served depends on the whole folder.
    hard_links: tuple[str, ...] = ()


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


@dataclass(frozen=True)
class _Folder:
    """A folder the listing found, that the walk goes into."""

    rel: str
    listed: tuple[int, int]  # its device and inode, as listed


def _entry_verdict(
    rel: str, info: os.stat_result | str, ignores: _IgnoreStack, options: ScanOptions
) -> _Listed | _Folder | Skipped | None:
    """What the walk does with one entry of a folder: read it (or look at it, a symlink),
    go into it, leave it out with a reason, or pass it by (a pruned folder, .gitignore)."""
    if isinstance(info, str):
        return Skipped(rel, info)
    name = rel.rpartition("/")[2]
    if stat.S_ISDIR(info.st_mode):
        if name in PRUNED_DIRECTORIES:
            return None  # tools' state, not documents: pruned silently
        if not options.include_secrets and is_secret(rel + "/"):
            return Skipped(rel + "/", "secret folder (never sent by default)")
        if ignores.ignored(rel, is_dir=True):
            return Skipped(rel + "/", "ignored by .gitignore")
        if (problem := name_problem(name)) is not None:
            return Skipped(rel + "/", problem)
        return _Folder(rel, identity(info))
    if name == ".gitignore":
        return None
    if not options.include_secrets and is_secret(rel):
        return Skipped(rel, "secret file (never sent by default)")
    if ignores.ignored(rel, is_dir=False):
        return Skipped(rel, "ignored by .gitignore")
    problem = name_problem(name)
    if problem is not None:
        return Skipped(rel, problem)
    if not stat.S_ISREG(info.st_mode) and not stat.S_ISLNK(info.st_mode):
        return Skipped(rel, f"not a regular file ({kind_of(info.st_mode)})")
    return _Listed(rel, info)


def _apply_gitignore(
    root: CorpusRoot, folder_fd: int, rel_dir: str, info: os.stat_result | str,
    ignores: _IgnoreStack,
) -> Skipped | None:  # fmt: skip
    """Apply the .gitignore of the open folder `folder_fd`, whose own status is `info`;
    why its rules are not applied, if they are not."""
    gitignore = f"{rel_dir}/.gitignore" if rel_dir else ".gitignore"
    if isinstance(info, os.stat_result) and stat.S_ISLNK(info.st_mode):
        problem: str | None = (
            "a symlink, which git does not follow for .gitignore: its rules are not applied"
        )
    else:
        problem = ignores.push_folder(folder_fd, rel_dir, root.path / gitignore)
    return Skipped(gitignore, problem) if problem is not None else None


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
                info = next(i for e, i in named if e.name == ".gitignore")
                problem = _apply_gitignore(root, folder_fd, rel_dir, info, ignores)
                if problem is not None:
                    yield problem
        except OSError as exc:
            yield Skipped(rel_dir or ".", f"folder cannot be read: {exc.strerror}")
            continue
        finally:
            os.close(folder_fd)
        for entry, info in named:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            verdict = _entry_verdict(rel, info, ignores, options)
            if isinstance(verdict, _Folder):
                subfolders.append((verdict.rel, verdict.listed))
            elif verdict is not None:
                yield verdict
        folders.extend(reversed(subfolders))


class _FullScanNeeded(Exception):
    """What changed reaches beyond the files named: rules, folders or other names."""


def _look_at(root: CorpusRoot, rel: str, options: ScanOptions) -> _Listed | Skipped | None:
    """What the walk would find at the file `rel`, going down to it folder by folder by
    the same rules, and reading each .gitignore on the way: None when it is not there, or
    in a folder the walk passes by or leaves out (which says so itself). Raises
    _FullScanNeeded when `rel` or a folder above it is not what a file's change leaves:
    a folder, a .gitignore, a folder that cannot be read."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[-1] == ".gitignore":
        raise _FullScanNeeded(rel)
    ignores = _IgnoreStack()
    listed: tuple[int, int] | None = None
    for depth, name in enumerate(parts):
        rel_dir = "/".join(parts[:depth])
        try:
            folder_fd = _open_folder(root, rel_dir)
        except OSError as exc:
            raise _FullScanNeeded(rel_dir) from exc
        try:
            if listed is not None and identity(os.fstat(folder_fd)) != listed:
                raise _FullScanNeeded(rel_dir)
            gitignore = _stat_in(folder_fd, ".gitignore")
            if gitignore is not None:
                _apply_gitignore(root, folder_fd, rel_dir, gitignore, ignores)
            info = _stat_in(folder_fd, name)
        except OSError as exc:
            raise _FullScanNeeded(rel_dir) from exc
        finally:
            os.close(folder_fd)
        if info is None:
            return None  # deleted, or its folder was
        here = "/".join(parts[: depth + 1])
        verdict = _entry_verdict(here, info, ignores, options)
        last = depth == len(parts) - 1
        if isinstance(verdict, _Folder):
            if last:
                raise _FullScanNeeded(rel)
            listed = verdict.listed
            continue
        if not last:
            if isinstance(verdict, _Listed):
                raise _FullScanNeeded(here)  # a file (or symlink) where a folder was
            if isinstance(info, str):
                raise _FullScanNeeded(here)  # a folder that cannot be looked at
            return None  # in a folder left out or pruned: it says so itself
        return verdict
    return None


def _stat_in(folder_fd: int, name: str) -> os.stat_result | str | None:
    """`name`'s own status in the open folder (as `_status` reads a listed entry), or why
    it has none; None if it is not there."""
    try:
        return os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"


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
    *,
    as_shown: bool = False,
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
        # `left_out` by the paths as listed, or (`as_shown`) as shown, escaped.
        named = shown(target_rel) if as_shown else target_rel
        reason = left_out.get(named, "ignored, or in a folder that is never read")
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
    previous: Mapping[str, Document] | ScanResult | None = None,
    progress: Callable[[int, int], None] | None = None,
    changed: Collection[str] | None = None,
) -> ScanResult:
    """Read the corpus. A file whose size and mtime match `previous` is not read again.
    `progress(done, total)`: called as the files listed are read.

    `root`: the corpus folder, pinned (a `CorpusRoot` the caller keeps), or a path opened
    for this scan only. Raises CorpusNotFoundError when the folder is gone, and
    CorpusReplacedError when its path names another folder, before or after the scan: a
    scan of a folder replaced meanwhile is not kept.

    `changed`, with `previous` the last scan's result: the only files (relative paths)
    that may have changed since, created, written, deleted or renamed; no folder, no rule
    file. Only those are looked at again (and the symlinks, which may name them), and the
    result is what a whole scan would find. When they reach further (a .gitignore, a
    folder, a file with several names), the whole folder is scanned."""
    pinned = root if isinstance(root, CorpusRoot) else CorpusRoot(root)
    options = options or ScanOptions()
    try:
        pinned.check()
        result = None
        if changed is not None and isinstance(previous, ScanResult):
            try:
                result = _rescan(pinned, options, previous, changed)
            except _FullScanNeeded as why:
                log.debug("rescanning all of %s: %s changed", pinned.path, why)
        if result is None:
            known = previous if not isinstance(previous, ScanResult) else _documents(previous)
            result = _scan(pinned, options, known or {}, progress)
        pinned.check()
    finally:
        if pinned is not root:
            pinned.close()
    return result


def _as_listed(document: Document, info: os.stat_result) -> bool:
    """Whether a file listed with `info` is still `document`, read before: same size and time."""
    return (document.size, document.mtime_ns) == (info.st_size, info.st_mtime_ns)


def _documents(result: ScanResult) -> dict[str, Document]:
    return {d.path: d for d in result.documents}


def _rescan(
    root: CorpusRoot, options: ScanOptions, previous: ScanResult, changed: Collection[str]
) -> ScanResult:
    """`previous`, with the files in `changed` and every symlink looked at again."""
    if not options.allow_hard_links:
        # A file with several names is served only if the scan meets all of them: a name
        # added or removed anywhere (ignored, secret or pruned) changes another's verdict.
        if previous.hard_links:
            raise _FullScanNeeded(previous.hard_links[0])
        for rel in changed:
            with contextlib.suppress(OSError):
                info = os.stat(rel, dir_fd=root.fd, follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                    raise _FullScanNeeded(rel)
    again = set(changed) | set(previous.links)
    shown_again = {shown(rel) for rel in again}
    known = _documents(previous)
    documents = {path: doc for path, doc in known.items() if path not in again}
    # Left-out names are kept as shown (escaped), and looked up so.
    skipped = {s.path: s for s in previous.skipped if s.path not in shown_again}
    reused = len(documents)
    links: list[_Listed] = []
    for rel in sorted(again):
        found = _look_at(root, rel, options)
        if found is None:
            continue
        if isinstance(found, Skipped):
            skipped[shown(found.path)] = Skipped(shown(found.path), found.reason)
            continue
        if found.is_link:
            links.append(found)
            continue
        before = known.get(rel)
        if before is not None and _as_listed(before, found.info):
            documents[rel] = before
            reused += 1
            continue
        read = _read(root, found, options, 1)
        if isinstance(read, Skipped):
            skipped[shown(read.path)] = Skipped(shown(read.path), read.reason)
        else:
            documents[rel] = read
    left_out = {path: s.reason for path, s in skipped.items()}
    for link in links:
        verdict = _link_verdict(root, link, documents, left_out, options, as_shown=True)
        if isinstance(verdict, Skipped):
            skipped[shown(verdict.path)] = Skipped(shown(verdict.path), verdict.reason)
        elif known.get(link.rel) == verdict:
            documents[link.rel] = known[link.rel]
            reused += 1
        else:
            documents[link.rel] = verdict
    return ScanResult(
        tuple(documents[path] for path in sorted(documents)),
        tuple(skipped[path] for path in sorted(skipped)),
        reused,
        tuple(link.rel for link in links),
    )


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
        if known is not None and _as_listed(known, info):
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
    shared = tuple(f.rel for f in listed if not f.is_link and f.info.st_nlink > 1)
    return ScanResult(
        tuple(documents), tuple(skipped), reused, tuple(link.rel for link in links), shared
    )


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
