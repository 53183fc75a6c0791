"""What the product knows of the account's rate limits, and how long a request must wait.

The API meters each organisation and model class with three token buckets: requests,
input tokens and output tokens per minute. Each holds at most its per-minute figure and
refills continuously at that figure / 60 per second; a request that does not fit is
refused with a 429 (shared/reference/anthropic-caching.md, "Rate limits"). Input tokens
are the uncached input and the cache writes: cache reads do not count on current models.

Before the first response the figures come from the limits table (`--tier`, a limits
file); from then on from the `anthropic-ratelimit-*` headers of every response, which
say each bucket's limit and what remains. Between two responses the state is what the
last headers said, less what was sent since, plus the refill. Pure: every call is given
`now` (on the caller's clock), nothing here reads a clock or sleeps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, cast

from corpus_cache.models.limits import LimitsTable

Kind = Literal["requests", "input_tokens", "output_tokens"]
KINDS: tuple[Kind, ...] = ("requests", "input_tokens", "output_tokens")

# Float refills land a hair short of a whole token after an honest wait.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Demand:
    """What one request takes from the buckets: itself, the input tokens that count
    (uncached input and cache writes), and the output it reserves (its max_tokens)."""

    requests: int = 1
    input_tokens: int = 0
    output_tokens: int = 0

    def of(self, kind: Kind) -> int:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }[kind]


@dataclass(frozen=True)
class Bucket:
    """`per_minute` at most; `level` held at `seen` (the caller's clock)."""

    per_minute: int
    level: float
    seen: float

    def available(self, now: float) -> float:
        refilled = max(0.0, now - self.seen) * self.per_minute / 60.0
        return min(float(self.per_minute), self.level + refilled)

    def wait_for(self, amount: int, now: float) -> float | None:
        """Seconds until `amount` fits; None if it never can (more than the bucket holds)."""
        if amount > self.per_minute:
            return None
        short = amount - self.available(now)
        if short <= _TOLERANCE:
            return 0.0
        return short * 60.0 / self.per_minute

    def taken(self, amount: int, now: float) -> Bucket:
        return Bucket(self.per_minute, self.available(now) - amount, max(now, self.seen))


@dataclass(frozen=True)
class RateLimits:
    """The buckets known now; a kind with no bucket is not limited as far as we know.
    `source` says where the figures come from, for the people reading `cache_status`."""

    buckets: Mapping[Kind, Bucket] = field(default_factory=dict)
    source: str = "unknown"

    @classmethod
    def unknown(cls) -> RateLimits:
        return cls()

    @classmethod
    def from_figures(cls, *, rpm: int, itpm: int, otpm: int, now: float, source: str) -> RateLimits:
        """Full buckets of a tier's figures: what a fresh minute holds."""
        figures: dict[Kind, int] = {"requests": rpm, "input_tokens": itpm, "output_tokens": otpm}
        return cls({k: Bucket(v, float(v), now) for k, v in figures.items()}, source)

    def per_minute(self, kind: Kind) -> int | None:
        bucket = self.buckets.get(kind)
        return bucket.per_minute if bucket is not None else None

    @property
    def requests_per_minute(self) -> int | None:
        return self.per_minute("requests")

    @property
    def input_tokens_per_minute(self) -> int | None:
        return self.per_minute("input_tokens")

    @property
    def output_tokens_per_minute(self) -> int | None:
        return self.per_minute("output_tokens")

    def wait_seconds(self, demand: Demand, now: float) -> float | None:
        """Seconds until `demand` fits every bucket; None if some bucket can never hold it."""
        longest = 0.0
        for kind, bucket in self.buckets.items():
            wait = bucket.wait_for(demand.of(kind), now)
            if wait is None:
                return None
            longest = max(longest, wait)
        return longest

    def too_large(self, demand: Demand) -> list[tuple[Kind, int, int]]:
        """(kind, demanded, per minute) of every bucket `demand` can never fit."""
        return [
            (kind, demand.of(kind), bucket.per_minute)
            for kind, bucket in self.buckets.items()
            if demand.of(kind) > bucket.per_minute
        ]

    def taken(self, demand: Demand, now: float) -> RateLimits:
        """The buckets after sending `demand` at `now`."""
        return replace(
            self, buckets={k: b.taken(demand.of(k), now) for k, b in self.buckets.items()}
        )

    def observed(
        self, headers: Mapping[str, str], now: float, *, in_flight: Demand | None = None
    ) -> RateLimits:
        """The buckets as a response's headers report them. `in_flight`: what was sent and
        not answered yet, which the server may not have counted when it wrote them (counted
        again here: waiting a little long is cheaper than a 429)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        buckets = dict(self.buckets)
        pending = in_flight or Demand(requests=0)
        for kind in KINDS:
            name = kind.replace("_", "-")
            limit = _number(lowered.get(f"anthropic-ratelimit-{name}-limit"))
            remaining = _number(lowered.get(f"anthropic-ratelimit-{name}-remaining"))
            if limit is None or remaining is None or limit <= 0:
                continue
            if kind != "requests" and remaining % 1000 == 0:
                # Token figures come rounded to the nearest thousand: assume the lower end.
                remaining = max(0.0, remaining - 500)
            level = min(float(limit), remaining) - pending.of(kind)
            buckets[kind] = Bucket(int(limit), level, now)
        if buckets == dict(self.buckets):
            return self
        return RateLimits(buckets, "the API's rate-limit headers")

    def to_json(self) -> str:
        """The buckets as text, for the other instances on the state folder."""
        return json.dumps(
            {
                "source": self.source,
                "buckets": {k: [b.per_minute, b.level, b.seen] for k, b in self.buckets.items()},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> RateLimits | None:
        """Buckets another instance wrote with `to_json`; None if `text` is not that."""
        try:
            raw = json.loads(text)
            buckets = {
                cast(Kind, k): Bucket(int(v[0]), float(v[1]), float(v[2]))
                for k, v in raw["buckets"].items()
                if k in KINDS
            }
            if not all(math.isfinite(b.level) and math.isfinite(b.seen) for b in buckets.values()):
                return None
            source = str(raw["source"])
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError):
            return None
        return cls(buckets, source)

    def describe(self, now: float) -> dict[str, object]:
        """Per kind: the limit per minute and what is available now, for status tools."""
        return {
            "source": self.source,
            **{
                kind: {"per_minute": b.per_minute, "available": int(b.available(now))}
                for kind, b in self.buckets.items()
            },
        }


def limits_at_tier(table: LimitsTable, tier: str, model_id: str, now: float) -> RateLimits:
    """A tier's figures for the model's class, as full buckets; unknown if the table has
    no figures for that class at that tier."""
    figures = table.get_tier(tier).classes.get(table.class_of(model_id))
    if figures is None:
        return RateLimits.unknown()
    return RateLimits.from_figures(
        rpm=figures.rpm, itpm=figures.itpm, otpm=figures.otpm, now=now,
        source=f"tier {tier} of the limits table, until the API's headers say",
    )  # fmt: skip


def least_input_tokens_per_minute(table: LimitsTable, model_id: str) -> int | None:
    """The lowest input-token limit any tier of the table gives the model's class; None if
    no tier has figures for it."""
    name = table.class_of(model_id)
    figures = [t.classes[name].itpm for t in table.tiers.values() if name in t.classes]
    return min(figures) if figures else None


def count_limits_at_tier(table: LimitsTable, tier: str, now: float) -> RateLimits:
    """A tier's token-counting requests per minute, as a full bucket of its own; unknown
    if the table has no figure for it."""
    per_minute = table.get_tier(tier).count_tokens_rpm
    if per_minute is None:
        return RateLimits.unknown()
    return RateLimits(
        {"requests": Bucket(per_minute, float(per_minute), now)},
        f"tier {tier} of the limits table, until the API's headers say",
    )


def wait_after_refusal(
    limits: RateLimits, headers: Mapping[str, str], demand: Demand, now: float
) -> float:
    """Seconds a request the API refused with a 429 waits before it is sent again: what
    the refusal's `retry-after` asks, or longer if the buckets, as its headers state them,
    need longer to hold `demand` (another program spending on the same key may have taken
    what we believed was left). Never negative; a demand no bucket can hold waits what
    retry-after says (the caller refuses it before sending again)."""
    asked = retry_after_seconds(headers) or 0.0
    needed = limits.observed(headers, now).wait_seconds(demand, now)
    return max(asked, needed or 0.0)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """A 429's `retry-after` (whole seconds), if it has one."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = _number(lowered.get("retry-after"))
    return value if value is not None and value >= 0 else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None
