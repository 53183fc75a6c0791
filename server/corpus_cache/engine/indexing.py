"""How far an index of the folder has got, so that a server can answer while its first
index runs in the background and say plainly how far it is."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from corpus_cache.errors import CorpusCacheError
from corpus_cache.wording import plural

LISTING = "listing files"
READING = "reading files"
COUNTING = "counting tokens"
PLANNING = "planning the layout"


@dataclass
class Indexing:
    """The progress of the latest index (a refresh), phase by phase; `done` is set once the
    first one has ended, well or not (`error`). Set from a worker thread while a folder is
    read: each field is one assignment, and a reader sees a consistent enough picture."""

    clock: Callable[[], float] = time.monotonic
    phase: str = LISTING
    files_done: int = 0
    files_total: int | None = None
    counted: int = 0
    to_count: int = 0
    started: float = field(default=0.0)
    reading_started: float | None = None
    error: CorpusCacheError | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def reading(self, done: int, total: int) -> None:
        if self.reading_started is None:
            self.reading_started = self.clock()
        self.phase, self.files_done, self.files_total = READING, done, total

    def counting(self, done: int, total: int) -> None:
        self.phase, self.counted, self.to_count = COUNTING, done, total

    def planning(self) -> None:
        self.phase = PLANNING

    def seconds_left(self) -> float | None:
        """A rough time to the end of reading the files, from the pace so far."""
        if self.phase != READING or not self.files_total or not self.files_done:
            return None
        elapsed = self.clock() - (self.reading_started or self.started)
        return elapsed / self.files_done * (self.files_total - self.files_done)

    def describe(self) -> str:
        """What a person reads: 'indexing the folder: reading files, 1,234 of 10,000'."""
        if self.phase == READING and self.files_total is not None:
            where = f"{self.files_done:,} of {plural(self.files_total, 'file')} read"
        elif self.phase == COUNTING and self.to_count:
            where = f"counting tokens, {self.counted:,} of {self.to_count:,}"
        else:
            where = self.phase
        return f"indexing the folder: {where}"

    def advice(self) -> str:
        """`describe`, and when to ask again."""
        left = self.seconds_left()
        again = (
            f"ask again in about {max(1, round(left + 2)):,} s"
            if left is not None
            else "ask again in a few seconds"
        )
        return f"{self.describe()}; {again}"
