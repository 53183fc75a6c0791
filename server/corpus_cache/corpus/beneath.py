"""Opening the corpus's files and folders beneath its root, never through a symlink.

A path that is checked and later opened by name can change in between: a folder swapped
for a symlink to /etc after its parent was listed, a link re-pointed, the corpus folder
itself replaced. So everything the scan reads is opened relative to one descriptor of the
corpus folder, opened when the server starts (`CorpusRoot`), and no symlink is followed on
the way, at any component:

- on Linux 5.6 and later, with one `openat2` call (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS):
  the kernel refuses a symlink anywhere in the path, and a path that would leave the root;
- elsewhere (or where a sandbox refuses openat2), folder by folder with
  `O_NOFOLLOW | O_DIRECTORY`, each relative to the one before, then the file `O_NOFOLLOW`.

Python has no binding for openat2, and no well-kept package wraps it (libpathrs's bindings
need a Rust library installed), so it is called through ctypes: a few lines, probed once.

What was opened is then checked on the descriptor (`fstat`) against what the listing saw.
The root is pinned: its device and inode are recorded, and a path that now names another
folder (a folder moved there, or a symlink to one) is reported, never read.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import cast

from ..errors import CorpusNotFoundError, CorpusReplacedError

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
FILE_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a named pipe would block the open until a writer came
    | getattr(os, "O_NOCTTY", 0)
    | _CLOEXEC
)

# linux/openat2.h
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture since Linux 5.6 (but alpha)
# Bounded like the kernel's own path lookups, so both ways of opening refuse the same paths.
PATH_MAX = 4096


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_probe_lock = threading.Lock()
use_openat2: bool | None = None  # None until probed
_AT_FDCWD = -100


def _syscall() -> Callable[..., int] | None:
    if sys.platform != "linux" or platform.machine() == "alpha":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_long
    return cast(Callable[..., int], function)


_SYSCALL = _syscall()


def _openat2(dir_fd: int, rel: str, flags: int) -> int:
    assert _SYSCALL is not None
    # Without O_NOFOLLOW: with O_DIRECTORY it would make a final symlink ENOTDIR, where
    # RESOLVE_NO_SYMLINKS says ELOOP, whichever component is one.
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    # Every argument a full register wide: syscall() is variadic.
    fd = int(_SYSCALL(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(dir_fd), os.fsencode(rel),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))  # fmt: skip
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), rel)
    return fd


def openat2_works() -> bool:
    """Whether openat2 can be used here: the kernel may be older than 5.6, or a seccomp
    filter (some container runtimes) may refuse system calls it does not know. Probed once;
    the walk of O_NOFOLLOW opens is used otherwise (tests set `use_openat2` to try it)."""
    global use_openat2
    with _probe_lock:
        if use_openat2 is None:
            if _SYSCALL is None:
                use_openat2 = False
            else:
                try:
                    os.close(_openat2(_AT_FDCWD, ".", DIRECTORY_FLAGS))
                    use_openat2 = True
                except OSError as exc:  # another error (a deleted working folder) is an answer
                    use_openat2 = exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL)
        return use_openat2


def _open_no_link(name: str, flags: int, dir_fd: int) -> int:
    """`name` in the folder `dir_fd`, not a symlink: ELOOP if it is one, as openat2 says."""
    try:
        return os.open(name, flags | _NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        # With O_DIRECTORY a symlink is ENOTDIR on Linux, and some systems say EMLINK.
        if exc.errno != errno.ELOOP and _is_link(name, dir_fd):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from exc
        raise


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _walk_open(dir_fd: int, parts: list[str], flags: int) -> int:
    """Open folder by folder, none of them a symlink; `parts` has no '', '.' or '..'."""
    current = dir_fd
    try:
        for part in parts[:-1]:
            inner = _open_no_link(part, DIRECTORY_FLAGS, current)
            if current != dir_fd:
                os.close(current)
            current = inner
        return _open_no_link(parts[-1], flags, current)
    finally:
        if current != dir_fd:
            os.close(current)


def open_beneath(dir_fd: int, rel: str, flags: int) -> int:
    """A descriptor of `rel` (slash-separated, relative) beneath the folder `dir_fd`,
    opened with `flags`, never through a symlink. Raises OSError: ELOOP when a component
    is a symlink, EXDEV for a path that would leave the folder, ENOENT, ENOTDIR, ..."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise OSError(errno.EXDEV, "not a path beneath the corpus folder", rel)
    if len(os.fsencode(rel)) >= PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), rel)
    if openat2_works():
        return _openat2(dir_fd, rel, flags)
    return _walk_open(dir_fd, parts, flags)


def identity(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)


class CorpusRoot:
    """The corpus folder, opened once: everything is read through this descriptor, so a
    folder put in its place later is never read. Closed when closed or collected."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, DIRECTORY_FLAGS)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise CorpusNotFoundError(f"corpus folder not found: {path}") from exc
        except OSError as exc:
            message = f"corpus folder cannot be opened: {path}: {exc.strerror}"
            raise CorpusNotFoundError(message) from exc
        self.fd = fd
        self.identity = identity(os.fstat(fd))
        self._finalizer = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._finalizer()

    def problem(self) -> CorpusNotFoundError | None:
        """Why the path no longer leads to this folder, if it does not: gone, or another
        folder (moved there, or a symlink to one) in its place."""
        try:
            info = os.stat(self.path)
        except OSError:
            return CorpusNotFoundError(f"corpus folder not found: {self.path}")
        if stat.S_ISDIR(info.st_mode) and identity(info) == self.identity:
            return None
        return CorpusReplacedError(replaced_message(self.path))

    def check(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise problem


def replaced_message(path: Path) -> str:
    return (
        f"the corpus folder {path} was replaced: the path now names another folder or a "
        "symlink, which is not served. The last snapshot of the original folder is kept; "
        "restart the server to serve what is at that path now"
    )
