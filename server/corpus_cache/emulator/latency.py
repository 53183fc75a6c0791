"""How long a response takes: time to first token, then output at a steady rate.

Time to first token = base + uncached tokens / prefill speed + cached tokens / read
speed; the output then takes output tokens / output speed. Both are divided by the time
scale (for quick runs). The figures are data (`models/limits.toml`, "latency").

Waiting is on the emulator's clock. With the clock running (the default, or offset), that
is real time, cut short if the clock is moved forward. With the clock frozen, a response
waits until the clock is advanced past its time: tests step through a slow response
deterministically, and a frozen clock that is never advanced holds the response.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio

from corpus_cache.models.limits import LatencyFigures

from .control import VirtualClock
from .errors import invalid

# A waiting response wakes when the clock is moved (control requests, on the server's
# loop) and at least this often, for moves made from another thread.
CLOCK_POLL_SECONDS = 1.0

_FIGURE_KEYS = (
    "base_seconds",
    "prefill_tokens_per_second",
    "read_tokens_per_second",
    "output_tokens_per_second",
)


@dataclass(frozen=True)
class Latency:
    base_seconds: float
    prefill_tokens_per_second: float
    read_tokens_per_second: float
    output_tokens_per_second: float
    time_scale: float = 1.0

    @classmethod
    def realistic(cls, figures: LatencyFigures, time_scale: float = 1.0) -> Latency:
        if time_scale <= 0:
            raise ValueError("the time scale must be positive")
        return cls(
            base_seconds=figures.base_seconds,
            prefill_tokens_per_second=figures.prefill_tokens_per_second,
            read_tokens_per_second=figures.read_tokens_per_second,
            output_tokens_per_second=figures.output_tokens_per_second,
            time_scale=time_scale,
        )

    def first_token(self, uncached_tokens: int, cached_tokens: int) -> float:
        seconds = (
            self.base_seconds
            + uncached_tokens / self.prefill_tokens_per_second
            + cached_tokens / self.read_tokens_per_second
        )
        return seconds / self.time_scale

    def output(self, output_tokens: int) -> float:
        return output_tokens / self.output_tokens_per_second / self.time_scale

    def describe(self) -> dict[str, Any]:
        return {"mode": "realistic", **self.__dict__}


def latency_from(body: Mapping[str, Any], figures: LatencyFigures) -> Latency | None:
    """A request to /_emulator/latency: `{"mode": "none"}` or `{"mode": "realistic",
    "time_scale": 10, "base_seconds": 5, ...}` (the table's figures for those not given)."""
    known = {"mode", "time_scale", *_FIGURE_KEYS}
    unknown = set(body) - known
    if unknown:
        raise invalid(f"latency: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    mode = body.get("mode", "realistic")
    if mode == "none":
        return None
    if mode != "realistic":
        raise invalid("mode: expected 'none' or 'realistic'")
    numbers: dict[str, float] = {}
    for key in ("time_scale", *_FIGURE_KEYS):
        if key in body:
            value = body[key]
            positive = key != "base_seconds"
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise invalid(f"{key}: expected a number")
            if value < 0 or (positive and value == 0):
                raise invalid(
                    f"{key}: expected a {'positive' if positive else 'non-negative'} number"
                )
            numbers[key] = float(value)
    latency = Latency.realistic(figures, numbers.pop("time_scale", 1.0))
    return replace(latency, **numbers)


async def wait_until(clock: VirtualClock, deadline: float) -> None:
    """Sleep with the event loop until the emulator's clock reads `deadline`."""
    while (left := deadline - clock.now()) > 0:
        moved = anyio.Event()
        wake = moved.set
        clock.watch(wake)
        try:
            with anyio.move_on_after(min(left, CLOCK_POLL_SECONDS)):
                await moved.wait()
        finally:
            clock.unwatch(wake)
