"""The ledger's journal: rows the ledger could not write (locked, full, read-only or corrupt
storage), kept until it can.

An append-only file of JSON lines beside the ledger, one row a line, each with the row's
key. A line is fsynced before the answer it records is returned. The ledger replays the
journal at its next successful write and when it opens, in the same transaction as that
write, and empties it after the commit; rows are inserted by key (`INSERT OR IGNORE`), so
a crash between the commit and the emptying adds nothing twice. The journal is locked
(`flock`) while it is appended to or replayed: servers sharing a ledger share its journal.

A full disk would refuse the journal's line too, so a reserve file beside it holds
`RESERVE_BYTES`: when an append finds the disk full, the reserve is given up and the
append tried again. The reserve is made again once the ledger has caught up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESERVE_BYTES = 1 << 20  # about 1,500 rows
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

Row = dict[str, Any]


class Journal:
    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path.with_name(ledger_path.name + ".pending.jsonl")
        self.reserve = ledger_path.with_name(ledger_path.name + ".reserve")

    def append(self, row: Row) -> None:
        """Add `row`, durably. Raises OSError when it cannot be written even after giving
        up the reserve."""
        line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
        try:
            self._append(line)
        except OSError as exc:
            if exc.errno not in _NO_SPACE or not self._give_up_reserve():
                raise
            self._append(line)

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = os.write(fd, line)
            if written != len(line):  # a short write: the disk filled up mid-line
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            os.fsync(fd)
        except OSError:
            # A partial line would be skipped on replay, but a later append would then
            # begin on that line: cut it off.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, os.fstat(fd).st_size - _partial_tail(fd))
            raise
        finally:
            os.close(fd)

    def waiting(self) -> bool:
        """Whether the journal holds anything (it may be only a torn line)."""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    @contextlib.contextmanager
    def taken(self) -> Iterator[list[Row]]:
        """The rows waiting, under the journal's lock; the journal is emptied when the block
        ends without an exception. A journal that cannot be read yields nothing (and is
        kept): the write it came with goes ahead."""
        if not self.waiting():
            yield []
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("cannot open the ledger's journal %s (%s): its rows wait", self.path, exc)
            yield []
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                rows = parse_rows(_read_all(fd))
            except OSError as exc:
                log.warning("cannot read the ledger's journal %s (%s): its rows wait",
                            self.path, exc)  # fmt: skip
                yield []
                return
            yield rows
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rows(self) -> list[Row]:
        """The rows waiting, read without taking them (for totals)."""
        try:
            return parse_rows(self.path.read_bytes())
        except OSError:
            return []

    def ensure_reserve(self) -> None:
        """Make the reserve if it is missing; a disk too full for it is left alone."""
        if self.reserve.exists():
            return
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.reserve.unlink()
            return
        os.close(fd)

    def _give_up_reserve(self) -> bool:
        try:
            self.reserve.unlink()
        except OSError:
            return False
        log.warning("the disk holding %s is full: its reserve was given up for the journal",
                    self.path)  # fmt: skip
        return True


def parse_rows(data: bytes) -> list[Row]:
    """The rows of a journal's bytes. A line that is not a JSON object (a line torn by a
    crash mid-append, never fsynced, so never reported as kept) is skipped."""
    rows: list[Row] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            log.warning("skipping line %d of the ledger's journal: not a whole row", number)
            continue
        if isinstance(row, dict) and isinstance(row.get("row_key"), str):
            rows.append(row)
    return rows


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _partial_tail(fd: int) -> int:
    """How many bytes at the end of the file follow its last newline."""
    size = os.fstat(fd).st_size
    window = min(size, 1 << 16)
    data = os.pread(fd, window, size - window)
    return len(data) - (data.rfind(b"\n") + 1)
