"""Rate limits as the API applies them: token buckets per API key and model class.

Rules (shared/reference/anthropic-caching.md, "Rate limits"):
- three buckets per organisation (here: API key) and model class: requests, input tokens
  and output tokens per minute; each holds at most a minute's worth and refills
  continuously at its per-minute figure / 60 per second, on the emulator's clock;
- input tokens count `input_tokens` + `cache_creation_input_tokens`; cache reads count
  too only for a class marked `cache_reads_count`;
- output tokens are reserved from `max_tokens` when the request starts and corrected to
  the real output when it ends;
- token counting has a requests-per-minute bucket of its own per key;
- a request that does not fit now is refused (429) with `retry-after`: the whole seconds
  until every bucket it needs holds enough, so a retry after that wait passes if nothing
  else is sent meanwhile; one that needs more than a bucket ever holds can never pass.

Everything here takes `now` and returns values: the HTTP layer turns a refusal into the
API's error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from corpus_cache.models.catalog import Catalog
from corpus_cache.models.limits import LimitsTable

from .errors import ApiError, invalid

Kind = Literal["requests", "input_tokens", "output_tokens"]
KINDS: tuple[Kind, ...] = ("requests", "input_tokens", "output_tokens")
_FIGURE: dict[Kind, str] = {"requests": "rpm", "input_tokens": "itpm", "output_tokens": "otpm"}
_UNIT: dict[Kind, str] = {
    "requests": "requests",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
}
DOCS_URL = "https://docs.claude.com/en/api/rate-limits"
COUNT_TOKENS_CLASS = "count_tokens"
# Float refills can land a hair short of a whole token after an honest wait.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Figures:
    """Per-minute limits of one model class; None is no limit."""

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    cache_reads_count: bool = False

    def per_minute(self, kind: Kind) -> int | None:
        value: int | None = getattr(self, _FIGURE[kind])
        return value

    def describe(self) -> dict[str, Any]:
        return {
            "rpm": self.rpm,
            "itpm": self.itpm,
            "otpm": self.otpm,
            "cache_reads_count": self.cache_reads_count,
        }


@dataclass(frozen=True)
class LimitConfig:
    """What the emulator enforces: figures per model class, and for token counting."""

    tier: str | None = None
    classes: Mapping[str, Figures] = field(default_factory=dict)
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default: Figures = Figures()  # models in no class, each its own class
    overrides: Figures = Figures()  # the figures given for every model
    count_tokens_rpm: int | None = None

    @property
    def enabled(self) -> bool:
        figures = [*self.classes.values(), self.default]
        return self.count_tokens_rpm is not None or any(
            f.per_minute(kind) is not None for f in figures for kind in KINDS
        )

    def for_model(self, model_id: str) -> tuple[str, Figures]:
        for name, models in self.members.items():
            if model_id in models:
                return name, self.classes.get(name, self.default)
        return model_id, self.classes.get(model_id, self.default)

    def describe(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            **self.overrides.describe(),
            "count_tokens_rpm": self.count_tokens_rpm,
            "models": {
                name: {**figures.describe(), "models": list(self.members.get(name, (name,)))}
                for name, figures in self.classes.items()
            },
        }


_FIGURE_KEYS = ("rpm", "itpm", "otpm")


def _figures_in(body: Mapping[str, Any], where: str) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for key in _FIGURE_KEYS:
        if key in body and body[key] is not None:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise invalid(f"{where}{key}: expected a positive whole number per minute")
            given[key] = value
    if "cache_reads_count" in body:
        if not isinstance(body["cache_reads_count"], bool):
            raise invalid(f"{where}cache_reads_count: expected true or false")
        given["cache_reads_count"] = body["cache_reads_count"]
    return given


def config_from(table: LimitsTable, body: Mapping[str, Any], catalog: Catalog) -> LimitConfig:
    """Limits from a request to /_emulator/limits (or the command line):
    `{"tier": "1", "rpm": .., "itpm": .., "otpm": .., "count_tokens_rpm": ..,
    "cache_reads_count": .., "models": {model id or class: {...}}}`, every key optional.
    The tier's figures come first, then those given for every model, then per model (an
    entry for a model sets its whole class: the class shares one set of buckets)."""
    known = {"tier", *_FIGURE_KEYS, "count_tokens_rpm", "cache_reads_count", "models"}
    unknown = set(body) - known
    if unknown:
        raise invalid(f"limits: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    tier_name = body.get("tier")
    tier = None
    if tier_name is not None:
        tier_name = str(tier_name)
        tier = table.tiers.get(tier_name)
        if tier is None:
            raise invalid(f"tier: expected one of {', '.join(table.tiers)}")
    overrides = _figures_in(body, "")
    count_rpm = body.get("count_tokens_rpm", tier.count_tokens_rpm if tier else None)
    if count_rpm is not None and (
        isinstance(count_rpm, bool) or not isinstance(count_rpm, int) or count_rpm <= 0
    ):
        raise invalid("count_tokens_rpm: expected a positive whole number per minute")

    per_class: dict[str, dict[str, Any]] = {}
    for name, model_class in table.classes.items():
        figures: dict[str, Any] = {"cache_reads_count": model_class.cache_reads_count}
        if tier is not None and name in tier.classes:
            limits = tier.classes[name]
            figures.update(rpm=limits.rpm, itpm=limits.itpm, otpm=limits.otpm)
        per_class[name] = {**figures, **overrides}
    models = body.get("models", {})
    if not isinstance(models, Mapping):
        raise invalid("models: expected an object of model ids or classes")
    for name, entry in models.items():
        if not isinstance(entry, Mapping):
            raise invalid(f"models.{name}: expected an object")
        spec = catalog.find(name)
        class_name = table.class_of(spec.id) if spec is not None else name
        if spec is None and name not in table.classes:
            raise invalid(f"models.{name}: neither a model nor a model class")
        base = per_class.get(class_name, overrides)
        per_class[class_name] = {**base, **_figures_in(entry, f"models.{name}.")}
    return LimitConfig(
        tier=tier_name,
        classes={name: Figures(**figures) for name, figures in per_class.items()},
        members={name: c.models for name, c in table.classes.items()},
        default=Figures(**overrides),
        overrides=Figures(**overrides),
        count_tokens_rpm=count_rpm,
    )


@dataclass
class Bucket:
    """Holds at most `per_minute`; refills at per_minute / 60 per second."""

    per_minute: int
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

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
    def __init__(self, config: LimitConfig) -> None:
        self.config = config
        self._buckets: dict[tuple[str, str, Kind], Bucket] = {}

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
            bucket = Bucket(per_minute, float(per_minute), now)
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
