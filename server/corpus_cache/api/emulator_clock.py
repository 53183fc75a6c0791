"""Time from the emulator's virtual clock, for tests and benchmarks that run several
`serve` processes against one emulator (`CORPUS_CACHE_CLOCK=emulator`): each reads the
clock the emulator's TTLs use (GET /_emulator/clock), and a sleep lasts until that clock
has moved on by its length, however the test moves it."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import httpx2

POLL_SECONDS = 0.05  # how often a sleep looks at the emulator's clock (wall time)


class EmulatorClock:
    def __init__(self, base_url: str) -> None:
        self._http = httpx2.Client(base_url=base_url, timeout=10)
        self._read: float | None = None  # the time last read in this process

    def now(self) -> float:
        response = self._http.get("/_emulator/clock")
        response.raise_for_status()
        self._read = float(response.json()["now"])
        return self._read

    async def sleep(self, seconds: float) -> None:
        """Until the clock reaches the time last read plus `seconds`. From the time last
        read, not from a new reading: that is the time the caller worked the wait out from,
        and a test moves this clock in steps, stopping at the instant a wait should end; a
        sleep counted from a later reading would end a step after it, or never."""
        until = (self._read if self._read is not None else self.now()) + seconds
        await anyio.lowlevel.checkpoint()
        # Polled: the clock is another process's, moved by whoever drives the test.
        while self.now() < until:  # noqa: ASYNC110
            await anyio.sleep(POLL_SECONDS)

    def close(self) -> None:
        self._http.close()
