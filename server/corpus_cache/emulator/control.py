"""What tests and benchmarks steer under /_emulator/: the clock, faults and the request log."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import STATUS_FOR_ERROR_TYPE, ApiError, invalid


class VirtualClock:
    """Wall time plus an offset, or frozen at a chosen instant. All TTL logic reads it."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._frozen_at: float | None = None
        self._watchers: set[Callable[[], None]] = set()

    def watch(self, moved: Callable[[], None]) -> None:
        """Call `moved` on every change (responses waiting on the clock); from the
        thread that changes the clock."""
        self._watchers.add(moved)

    def unwatch(self, moved: Callable[[], None]) -> None:
        self._watchers.discard(moved)

    def _moved(self) -> None:
        for moved in list(self._watchers):
            moved()

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def now(self) -> float:
        if self._frozen_at is not None:
            return self._frozen_at
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise invalid("advance: the clock only moves forward")
        if self._frozen_at is not None:
            self._frozen_at += seconds
        else:
            self._offset += seconds
        self._moved()

    def set(self, epoch_seconds: float) -> None:
        if self._frozen_at is not None:
            self._frozen_at = epoch_seconds
        else:
            self._offset = epoch_seconds - time.time()
        self._moved()

    def freeze(self, frozen: bool) -> None:
        if frozen and self._frozen_at is None:
            self._frozen_at = self.now()
        elif not frozen and self._frozen_at is not None:
            self._offset = self._frozen_at - time.time()
            self._frozen_at = None
            self._moved()

    def reset(self) -> None:
        self._offset = 0.0
        self._frozen_at = None
        self._moved()

    def describe(self) -> dict[str, Any]:
        return {"now": self.now(), "frozen": self._frozen_at is not None}

    def apply(self, body: dict[str, Any]) -> None:
        """Apply a control request: {"set": epoch}, {"advance": s}, {"frozen": bool}."""
        known = {"set", "advance", "frozen"}
        if not body or set(body) - known:
            raise invalid(f"clock: expected some of {sorted(known)}")
        if "frozen" in body:
            self.freeze(bool(body["frozen"]))
        if "set" in body:
            self.set(_number(body["set"], "set"))
        if "advance" in body:
            self.advance(_number(body["advance"], "advance"))


def _number(value: Any, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid(f"{name}: expected a number of seconds")
    return float(value)


KINDS = ("error", "delay", "malformed", "truncated")
ENDINGS = ("end", "drop", "error")


@dataclass
class Fault:
    """The next `remaining` matching requests fail, hang, answer garbage, or (streamed)
    stop half-way: "truncated", after stalling `delay` seconds, ends the stream ("end"),
    cuts the connection ("drop") or sends an error event ("error", of `error_type`)."""

    remaining: int
    kind: str  # "error" | "delay" | "malformed" | "truncated"
    status: int = 529
    error_type: str = "overloaded_error"
    message: str = "Overloaded (injected by the emulator)"
    retry_after: float | None = None
    delay: float = 0.0
    path: str = "/v1/messages"
    ending: str | None = None  # of a truncated stream

    def matches(self, path: str) -> bool:
        return path == self.path or (self.path.endswith("*") and path.startswith(self.path[:-1]))

    def to_error(self) -> ApiError:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["retry-after"] = f"{self.retry_after:g}"
        return ApiError(self.status, self.error_type, self.message, headers=headers)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class FaultPlan:
    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, body: dict[str, Any]) -> Fault:
        kind = body.get("kind", "delay" if "delay" in body and "status" not in body else "error")
        if kind not in KINDS:
            raise invalid(f"kind: expected one of {', '.join(map(repr, KINDS))}")
        count = body.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise invalid("count: expected a positive integer")
        fault = Fault(remaining=count, kind=kind, path=str(body.get("path", "/v1/messages")))
        if kind in ("error", "truncated"):
            error_type = str(body.get("error_type", "overloaded_error"))
            fault.error_type = error_type
            fault.status = int(body.get("status", STATUS_FOR_ERROR_TYPE.get(error_type, 500)))
            fault.message = str(body.get("message", f"{error_type} (injected by the emulator)"))
            if body.get("retry_after") is not None:
                fault.retry_after = _number(body["retry_after"], "retry_after")
        if kind in ("delay", "truncated"):
            fault.delay = _number(body.get("delay", 0), "delay")
        if kind == "truncated":
            fault.ending = str(body.get("ending", "end"))
            if fault.ending not in ENDINGS:
                raise invalid(f"ending: expected one of {', '.join(map(repr, ENDINGS))}")
        self._faults.append(fault)
        return fault

    def take(self, path: str, kind: str) -> Fault | None:
        for fault in self._faults:
            if fault.kind == kind and fault.matches(path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def clear(self) -> None:
        self._faults.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [fault.describe() for fault in self._faults]


@dataclass
class RequestLog:
    """Recent requests with their accounting; the last few keep their bodies."""

    capacity: int = 1000
    bodies_kept: int = 50
    entries: deque[dict[str, Any]] = field(default_factory=deque)
    # Requests by path since the last reset, however many the log no longer holds.
    counts: Counter[str] = field(default_factory=Counter)

    def record(self, entry: dict[str, Any]) -> None:
        self.counts[str(entry.get("path", ""))] += 1
        self.entries.append(entry)
        while len(self.entries) > self.capacity:
            self.entries.popleft()
        if len(self.entries) > self.bodies_kept:
            self.entries[-self.bodies_kept - 1].pop("body", None)

    def recent(self, limit: int, with_bodies: bool) -> list[dict[str, Any]]:
        chosen = list(self.entries)[-limit:] if limit > 0 else []
        if with_bodies:
            return chosen
        return [{k: v for k, v in entry.items() if k != "body"} for entry in chosen]

    def clear(self) -> None:
        self.entries.clear()
        self.counts.clear()
