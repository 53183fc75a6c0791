"""Reading one file of the corpus, whatever happened to it since the folder was listed.

Between listing a folder and reading a file, the file may vanish, lose its permissions, be
replaced by a folder, a named pipe or a symlink, or grow. The file is opened without
blocking (opening a named pipe for reading would wait for a writer forever), checked to be
a regular file on the open descriptor itself, and read up to a limit, never further: a
file that grew past the limit is left out rather than read into memory.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

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
    """The bytes of the regular file at `path`, at most `limit` of them.

    `follow_symlinks=False`: a file that was not a symlink when listed must not have become
    one (pointing anywhere, perhaps outside the corpus) by the time it is opened."""
    flags = _OPEN_FLAGS if follow_symlinks else _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise UnreadableError("vanished before it could be read") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise UnreadableError("replaced by a symlink before it could be read") from exc
        raise UnreadableError(f"cannot be read: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableError(f"not a regular file ({kind_of(info.st_mode)})")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise UnreadableError(f"cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if total > limit:
        raise UnreadableError(f"grew past the {limit:,}-byte limit while being read")
    return b"".join(chunks)
