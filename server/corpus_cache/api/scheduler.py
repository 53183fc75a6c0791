"""The waiting room of the one caller: requests wait here, in the order api/scheduling.py
decides, until the rate-limit buckets hold what they take.

One waiter at a time sleeps (the driver), until the first waiting request may fit; any
change (a request arriving or leaving, a response's headers) wakes it to decide again,
so a question arriving behind a warm request that waits 50 s is sent as soon as the
buckets hold the question, not after the warm request. Sleeping is on the caller's clock
with its `sleep` (the emulator's virtual clock in tests).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio

from corpus_cache.api.ratelimits import Demand, Kind, RateLimits
from corpus_cache.api.scheduling import (
    Pool,
    Priority,
    Waiting,
    admissions,
    limiting_kind,
    schedule,
)

log = logging.getLogger(__name__)


class NeverFits(Exception):
    """The request needs more than a bucket ever holds (as its figures are known now)."""


@dataclass(frozen=True)
class WaitingNote:
    """Requests waiting for one reason, for the status tools: `kind` is the bucket they
    wait for (None: they wait behind requests sent first), `seconds` the longest of their
    estimated waits (None: not known)."""

    pool: Pool
    kind: Kind | None
    count: int
    seconds: float | None


class Scheduler:
    def __init__(
        self,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        buckets: Mapping[Pool, RateLimits],
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.buckets: dict[Pool, RateLimits] = dict(buckets)
        self._queue: dict[int, Waiting] = {}
        self._granted: dict[int, anyio.Event] = {}
        self._refused: set[int] = set()
        self._tickets = itertools.count()
        self._groups = itertools.count()
        self._driving = False
        self._nap: anyio.CancelScope | None = None
        self._changed = anyio.Event()
        # After an honest sleep the time is at least its end, whatever the clock says (a
        # frozen test clock that the sleep did not move counts as if it had moved).
        self._not_before = float("-inf")

    def now(self) -> float:
        return max(self._clock(), self._not_before)

    def new_group(self) -> int:
        """An id for the requests of one fan-out question."""
        return next(self._groups)

    async def admit(
        self, priority: Priority, pool: Pool, demand: Demand, group: int | None = None
    ) -> float:
        """Wait until the request may be sent, and take what it needs from the buckets.
        Returns the seconds it waited. Raises NeverFits if it never can be sent."""
        ticket = next(self._tickets)
        arrived = self.now()
        self._queue[ticket] = Waiting(ticket, priority, pool, demand, arrived, group)
        granted = self._granted[ticket] = anyio.Event()
        try:
            self._decide()
            if not granted.is_set():
                self._changed_now()  # a sleeping driver decides again, with this one in view
            while not granted.is_set():
                if ticket in self._refused:
                    raise NeverFits()
                if self._driving:
                    await self._changed.wait()
                else:
                    await self._drive()
            return self.now() - arrived
        finally:
            self._granted.pop(ticket, None)
            self._refused.discard(ticket)
            if self._queue.pop(ticket, None) is not None:  # cancelled while waiting
                self._changed_now()

    def observed(self, pool: Pool, limits: RateLimits) -> None:
        """What a response said of the buckets: waiting requests decide again."""
        self.buckets[pool] = limits
        self._changed_now()

    def expected_wait(self, priority: Priority, pool: Pool, demands: list[Demand]) -> float | None:
        """Seconds until the last of `demands` (requests of one question) could be sent if
        they arrived now, with what is already waiting; None if one never can."""
        now = self.now()
        group = -1  # not an id new_group gives
        tickets = [-1 - i for i in range(len(demands))]
        queue = [
            *self._queue.values(),
            *(
                Waiting(t, priority, pool, d, now, group)
                for t, d in zip(tickets, demands, strict=True)
            ),
        ]
        starts = schedule(queue, self.buckets, now)
        wanted = [starts[t] for t in tickets]
        if any(s is None for s in wanted):
            return None
        return max(0.0, max(s for s in wanted if s is not None) - now)

    def waiting(self) -> list[WaitingNote]:
        """What waits now, by the bucket it waits for, with the longest estimated wait."""
        now = self.now()
        queue = list(self._queue.values())
        starts = schedule(queue, self.buckets, now)
        notes: dict[tuple[Pool, Kind | None], WaitingNote] = {}
        for w in queue:
            key = (w.pool, limiting_kind(w, self.buckets, now))
            start = starts.get(w.ticket)
            seconds = None if start is None else max(0.0, start - now)
            seen = notes.get(key)
            if seen is None:
                notes[key] = WaitingNote(w.pool, key[1], 1, seconds)
            else:
                longest = (
                    None if seen.seconds is None or seconds is None else max(seen.seconds, seconds)
                )
                notes[key] = WaitingNote(w.pool, key[1], seen.count + 1, longest)
        return list(notes.values())

    def _decide(self) -> float | None:
        """Grant what fits now; returns when to look again."""
        decided = admissions(self._queue.values(), self.buckets, self.now())
        self.buckets = dict(decided.buckets)
        for ticket in decided.refused:
            self._refused.add(ticket)
            self._queue.pop(ticket, None)
        for ticket in decided.admit:
            self._queue.pop(ticket, None)
            self._granted[ticket].set()
        if decided.admit or decided.refused:
            self._changed_now()
        return decided.wake_at

    async def _drive(self) -> None:
        """Sleep until the first waiting request may fit, or something changes."""
        self._driving = True
        try:
            wake_at = self._decide()
            if wake_at is None:
                return
            began = self.now()
            wait = max(0.0, wake_at - began)
            log.info("waiting %.1f s for the rate limits", wait)
            with anyio.CancelScope() as nap:
                self._nap = nap
                await self._sleep(wait)
            if not nap.cancelled_caught:
                self._not_before = max(self._not_before, began + wait)
            self._decide()
        finally:
            self._nap = None
            self._driving = False
            self._changed_now()

    def _changed_now(self) -> None:
        """Wake every waiter (one of them drives next) and the sleeping driver."""
        self._changed.set()
        self._changed = anyio.Event()
        if self._nap is not None:
            self._nap.cancel()
