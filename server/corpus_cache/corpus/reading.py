"""Reading one file of the corpus, whatever happened to it since the folder was listed.

Between listing a folder and reading a file, the file may vanish, lose its permissions, be
replaced by a folder, a named pipe, a symlink or another file, a folder on its path may be
replaced by a symlink, or the file may grow. The file is opened beneath the corpus folder's
descriptor, through no symlink (beneath.py), without blocking (opening a named pipe for
reading would wait for a writer forever); it is checked on the open descriptor itself to be
a regular file, the very one that was listed (device and inode), and read up to a limit,
never further: a file that grew past the limit is left out rather than read into memory.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from .beneath import FILE_FLAGS, identity, open_beneath

_CHUNK = 1 << 20
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class UnreadableError(Exception):
    """The file could not be read; the message says why, for the list of what was left out."""


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


def read_regular_file(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them: for a file a user
    names directly. The corpus is never read this way, but with `read_beneath`.

    `follow_symlinks=False`: a file that was not a symlink when listed must not have become
    one (pointing anywhere, perhaps outside the corpus) by the time it is opened."""
    flags = _OPEN_FLAGS if follow_symlinks else _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and follow_symlinks:
            raise UnreadableError(f"cannot be read: {exc.strerror}") from exc
        raise UnreadableError(_why_not_opened(exc)) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableError(f"not a regular file ({kind_of(info.st_mode)})")
        return _read_up_to(fd, limit)
    except OSError as exc:
        raise UnreadableError(f"cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _why_not_opened(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "vanished before it could be read"
    if exc.errno == errno.ELOOP:
        return "replaced by a symlink before it could be read"
    if exc.errno == errno.ENOTDIR:
        return "a folder on its path was replaced by a file before it could be read"
    if exc.errno == errno.EXDEV:
        return "outside the corpus"
    return f"cannot be read: {exc.strerror}"


def read_beneath(
    dir_fd: int,
    rel: str,
    limit: int,
    *,
    full_path: Path,
    listed: tuple[int, int] | None = None,
) -> tuple[bytes, os.stat_result]:
    """The bytes (at most `limit`) of the regular file `rel` beneath the folder `dir_fd`,
    and its status as opened. `listed`: the device and inode the listing saw, which the
    opened file must still have. `full_path` is for audit hooks only: openat2 goes through
    ctypes, which raises no audit event of its own, so the one os.open would is raised here."""
    sys.audit("open", str(full_path), None, FILE_FLAGS)
    try:
        fd = open_beneath(dir_fd, rel, FILE_FLAGS)
    except OSError as exc:
        raise UnreadableError(_why_not_opened(exc)) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableError(f"not a regular file ({kind_of(info.st_mode)})")
        if listed is not None and identity(info) != listed:
            raise UnreadableError("replaced by another file before it could be read")
        data = _read_up_to(fd, limit)
    except OSError as exc:
        raise UnreadableError(f"cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return data, info


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise UnreadableError(f"grew past the {limit:,}-byte limit while being read")
    return b"".join(chunks)
