"""Rate limits as the API applies them: token buckets per API key and model class.

Rules (shared/reference/anthropic-caching.md, "Rate limits"):
- three buckets per organisation (here: API key) and model class: requests, input tokens
  and output tokens per minute; each holds at most a minute's worth and refills
  continuously at its per-minute figure / 60 per second, on the emulator's clock, times
  the time scale (as latency is divided by it: a time-scaled run keeps both in step);
- input tokens count `input_tokens` + `cache_creation_input_tokens`; cache reads count
  too only for a class marked `cache_reads_count`;
- output tokens are reserved from `max_tokens` when the request starts and corrected to
  the real output when it ends;
- token counting has a requests-per-minute bucket of its own per key;
- a request that does not fit now is refused (429) with `retry-after`: the whole seconds
  until every bucket it needs holds enough, so a retry after that wait passes if nothing
  else is sent meanwhile; one that needs more than a bucket ever holds can never pass.

The buckets are state, but nothing here reads a clock or does I/O: every call is given
`now`, and a refusal is raised as the API's error, with its headers, for the HTTP layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import ApiError
from .limit_config import KINDS, Kind, LimitConfig

_UNIT: dict[Kind, str] = {
    "requests": "requests",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
}

DOCS_URL = "https://docs.claude.com/en/api/rate-limits"
COUNT_TOKENS_CLASS = "count_tokens"
# Float refills can land a hair short of a whole token after an honest wait.
_TOLERANCE = 1e-9


@dataclass
class Bucket:
    """Holds at most `per_minute`; refills at per_minute / 60 per second."""

    per_minute: int
    level: float
    updated: float
    time_scale: float = 1.0

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0 * self.time_scale

    def refill(self, now: float) -> None:
        # A clock set backwards refills nothing until it passes the last update again.
        if now > self.updated:
            self.level = min(float(self.per_minute), self.level + (now - self.updated) * self.rate)
            self.updated = now

    def _short(self, demand: float) -> float:
        return demand - self.level - _TOLERANCE * self.per_minute

    def wait_for(self, demand: float) -> float:
        """Seconds until `demand` fits (after `refill`); infinite if it never can."""
        if demand > self.per_minute:
            return math.inf
        return max(0.0, self._short(demand) / self.rate)

    def full_at(self, now: float) -> float:
        return now + (self.per_minute - self.level) / self.rate


def rfc3339(epoch: float) -> str:
    """Whole seconds, rounded up: a reset time is never earlier than the truth."""
    moment = datetime.fromtimestamp(math.ceil(epoch), tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _remaining(kind: Kind, level: float) -> int:
    if kind == "requests":
        return max(0, math.floor(level + _TOLERANCE))
    # The rate-limits page: token figures are "rounded to the nearest thousand".
    return max(0, round(level / 1000) * 1000)


@dataclass
class Reservation:
    """The output tokens a running request holds, until it ends."""

    bucket: Bucket | None
    reserved: int
    settled: bool = False


@dataclass(frozen=True)
class Admission:
    """A request that fits: its response headers and what the log shows."""

    headers: dict[str, str]
    bucket_class: str
    before: dict[str, float]
    after: dict[str, float]
    reservation: Reservation


class RateLimiter:
    def __init__(self, config: LimitConfig, time_scale: float = 1.0) -> None:
        self.config = config
        self.time_scale = time_scale
        self._buckets: dict[tuple[str, str, Kind], Bucket] = {}

    def scale_time(self, time_scale: float, now: float) -> None:
        """Refill at `time_scale` times the real rate from `now` on."""
        for bucket in self._buckets.values():
            bucket.refill(now)
            bucket.time_scale = time_scale
        self.time_scale = time_scale

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def clear(self) -> None:
        self._buckets.clear()

    def _bucket(
        self, workspace: str, bucket_class: str, kind: Kind, per_minute: int, now: float
    ) -> Bucket:
        key = (workspace, bucket_class, kind)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.per_minute != per_minute:
            bucket = Bucket(per_minute, float(per_minute), now, self.time_scale)
            self._buckets[key] = bucket
        bucket.refill(now)
        return bucket

    def admit_message(
        self,
        workspace: str,
        model_id: str,
        *,
        uncached_tokens: int,
        cached_tokens: int,
        max_tokens: int,
        now: float,
    ) -> Admission:
        bucket_class, figures = self.config.for_model(model_id)
        input_demand = uncached_tokens + (cached_tokens if figures.cache_reads_count else 0)
        demands: dict[Kind, int] = {
            "requests": 1,
            "input_tokens": input_demand,
            "output_tokens": max_tokens,
        }
        buckets: dict[Kind, Bucket] = {}
        for kind in KINDS:
            per_minute = figures.per_minute(kind)
            if per_minute is not None:
                buckets[kind] = self._bucket(workspace, bucket_class, kind, per_minute, now)
        return self._admit(workspace, model_id, bucket_class, buckets, demands, now)

    def admit_count(self, workspace: str, model: str, now: float) -> Admission:
        per_minute = self.config.count_tokens_rpm
        buckets: dict[Kind, Bucket] = {}
        if per_minute is not None:
            buckets["requests"] = self._bucket(
                workspace, COUNT_TOKENS_CLASS, "requests", per_minute, now
            )
        return self._admit(workspace, model, COUNT_TOKENS_CLASS, buckets, {"requests": 1}, now)

    def _admit(
        self,
        workspace: str,
        model: str,
        bucket_class: str,
        buckets: dict[Kind, Bucket],
        demands: Mapping[Kind, int],
        now: float,
    ) -> Admission:
        before: dict[str, float] = {kind: round(b.level, 3) for kind, b in buckets.items()}
        waits = {kind: b.wait_for(demands[kind]) for kind, b in buckets.items()}
        longest = max(waits, key=waits.__getitem__, default=None)
        if longest is not None and waits[longest] > 0:
            raise self._refusal(
                workspace, model, bucket_class, buckets, demands, longest, waits[longest], now
            )
        for kind, bucket in buckets.items():
            bucket.level -= demands[kind]
        after: dict[str, float] = {kind: round(b.level, 3) for kind, b in buckets.items()}
        output = buckets.get("output_tokens")
        return Admission(
            headers=headers(buckets, now, counting=bucket_class == COUNT_TOKENS_CLASS),
            bucket_class=bucket_class,
            before=before,
            after=after,
            reservation=Reservation(output, demands.get("output_tokens", 0)),
        )

    def _refusal(
        self,
        workspace: str,
        model: str,
        bucket_class: str,
        buckets: dict[Kind, Bucket],
        demands: Mapping[Kind, int],
        kind: Kind,
        wait: float,
        now: float,
    ) -> ApiError:
        bucket = buckets[kind]
        counting = bucket_class == COUNT_TOKENS_CLASS
        unit = "token counting requests" if counting else _UNIT[kind]
        message = (
            f"This request would exceed your organization's rate limit of "
            f"{bucket.per_minute:,} {unit} per minute (org: {workspace}, model: {model})."
        )
        extra = headers(buckets, now, counting=counting)
        if math.isinf(wait):
            message += (
                f" It needs {demands[kind]:,} {_UNIT[kind]} at once, more than this limit ever "
                "allows, so it can never pass at this limit."
            )
            extra["x-should-retry"] = "false"
            retry_after = None
        else:
            retry_after = max(1, math.ceil(wait))
            extra["retry-after"] = str(retry_after)
        message += (
            f" For details, refer to: {DOCS_URL}. You can see the response headers for current "
            "usage. Please reduce the prompt length or the maximum tokens requested, or try "
            "again later."
        )
        levels = {k: round(b.level, 3) for k, b in buckets.items()}
        error = ApiError(429, "rate_limit_error", message, headers=extra)
        error.details = {
            "limits": {
                "class": bucket_class,
                "limited_by": kind,
                "demand": dict(demands),
                "before": levels,
                "after": levels,
                "retry_after": retry_after,
            }
        }
        return error

    def settle(self, reservation: Reservation, output_tokens: int, now: float) -> dict[str, float]:
        """The request ended: give back what it reserved beyond what it wrote."""
        if reservation.settled or reservation.bucket is None:
            reservation.settled = True
            return {}
        reservation.settled = True
        bucket = reservation.bucket
        bucket.refill(now)
        refund = max(0, reservation.reserved - output_tokens)
        bucket.level = min(float(bucket.per_minute), bucket.level + refund)
        return {"output_tokens": round(bucket.level, 3)}

    def levels(self, now: float) -> dict[str, dict[str, dict[str, float]]]:
        """Every bucket's level now, by key (workspace) and class."""
        shown: dict[str, dict[str, dict[str, float]]] = {}
        for (workspace, bucket_class, kind), bucket in sorted(self._buckets.items()):
            bucket.refill(now)
            shown.setdefault(workspace, {}).setdefault(bucket_class, {})[kind] = round(
                bucket.level, 3
            )
        return shown


def headers(
    buckets: Mapping[Kind, Bucket], now: float, *, counting: bool = False
) -> dict[str, str]:
    """The `anthropic-ratelimit-*` headers for the buckets a request used."""
    shown: dict[str, str] = {}

    def put(name: str, kind: Kind, bucket: Bucket) -> None:
        shown[f"anthropic-ratelimit-{name}-limit"] = str(bucket.per_minute)
        shown[f"anthropic-ratelimit-{name}-remaining"] = str(_remaining(kind, bucket.level))
        shown[f"anthropic-ratelimit-{name}-reset"] = rfc3339(bucket.full_at(now))

    for kind, bucket in buckets.items():
        put(kind.replace("_", "-"), kind, bucket)
    tokens = [(k, b) for k, b in buckets.items() if k != "requests"]
    if tokens and not counting:
        # "The values for the most restrictive limit currently in effect."
        kind, bucket = min(tokens, key=lambda kb: kb[1].level)
        put("tokens", kind, bucket)
    return shown
