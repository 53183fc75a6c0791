"""The emulator's /_emulator/ control endpoints, for tests."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2

FROZEN_AT = 1_800_000_000.0  # where tests freeze the emulator's clock (Control.freeze)


class Control:
    """The emulator's /_emulator/ endpoints."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=10)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.post(f"/_emulator/{path}", json=body or {})
        response.raise_for_status()
        return response.json()

    def freeze(self, at: float = FROZEN_AT) -> None:
        self.post("clock", {"frozen": True, "set": at})

    def advance(self, seconds: float) -> None:
        self.post("clock", {"advance": seconds})

    def fault(self, **fault: Any) -> None:
        self.post("faults", fault)

    def limits(self, **body: Any) -> dict[str, Any]:
        """Replace the rate limits (`{}`: none); the answer is GET /_emulator/limits."""
        described: dict[str, Any] = self.post("limits", body)
        return described

    def latency(self, **body: Any) -> dict[str, Any]:
        described: dict[str, Any] = self.post("latency", body)
        return described

    def log(self, bodies: bool = False) -> list[dict[str, Any]]:
        params = {"bodies": "1" if bodies else "0", "limit": "1000"}
        requests: list[dict[str, Any]] = self.http.get("/_emulator/log", params=params).json()[
            "requests"
        ]
        return requests

    def cache(self, api_key: str = "test-key") -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.http.get(
            "/_emulator/cache", headers={"x-api-key": api_key}
        ).json()["entries"]
        return entries


class EmulatorTime:
    """An engine's clock and sleep on the emulator's frozen clock: the clock reads it, and
    a sleep moves it (a minute's wait for the rate limits takes no time, and the emulator's
    buckets refill as the engine expected). `waits` are the sleeps' lengths; `hold_at`
    makes the n-th sleep and those after it wait until `release` is set (a build held
    half-way), with `held` set once one does."""

    def __init__(self, emulator: Control, start: float = FROZEN_AT) -> None:
        self.emulator = emulator
        self.now = start
        self.waits: list[float] = []
        self.hold_at: int | None = None
        self.held = anyio.Event()
        self.release = anyio.Event()

    @property
    def sleeps(self) -> int:
        return len(self.waits)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.hold_at is not None and self.sleeps >= self.hold_at:
            self.held.set()
            await self.release.wait()
        self.emulator.advance(seconds)
        self.now += seconds
