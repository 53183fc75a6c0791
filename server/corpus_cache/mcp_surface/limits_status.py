"""What cache_status and corpus://stats say of the rate limits: the figures known, where
they come from, what is available now, and what waits for them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from corpus_cache.api.ratelimits import RateLimits
from corpus_cache.wording import about_seconds, plural

if TYPE_CHECKING:  # the SDK loads after the server answers (cli/main.py `_serve`)
    from corpus_cache.api.caller import ApiCaller

_NAMES = {"requests": "requests", "input_tokens": "input tokens", "output_tokens": "output tokens"}
_BUCKETS = {
    "requests": "the requests bucket",
    "input_tokens": "the input-token bucket",
    "output_tokens": "the output-token bucket",
}


class BucketOut(BaseModel):
    per_minute: int
    available: int = Field(description="what the bucket holds now, as far as is known")


class WaitingOut(BaseModel):
    requests: int
    waiting_for: str = Field(
        description="the bucket they wait for (input_tokens, output_tokens, requests, "
        "count_tokens), or `their turn` behind requests sent first"
    )
    seconds: float | None = Field(description="the longest of their estimated waits")


class LimitsOut(BaseModel):
    source: str = Field(description="where the figures come from: a tier of the limits "
                        "table, the API's rate-limit headers, or not known")  # fmt: skip
    messages: dict[str, BucketOut] = Field(
        description="per minute and available now: requests, input_tokens, output_tokens"
    )
    count_tokens: BucketOut | None = Field(
        default=None, description="token counting's own requests per minute"
    )
    waiting: list[WaitingOut] = Field(default_factory=list)


def limits_out(caller: ApiCaller) -> LimitsOut:
    now = caller.scheduler.now()
    counting = caller.count_limits.buckets.get("requests")
    waiting = [
        WaitingOut(
            requests=note.count,
            waiting_for=(
                "count_tokens"
                if note.pool == "count_tokens" and note.kind is not None
                else note.kind or "their turn"
            ),
            seconds=None if note.seconds is None else round(note.seconds, 1),
        )
        for note in caller.waiting()
    ]
    return LimitsOut(
        source=_source(caller.limits, caller.count_limits),
        messages=_buckets(caller.limits, now),
        count_tokens=(
            BucketOut(per_minute=counting.per_minute, available=int(counting.available(now)))
            if counting is not None
            else None
        ),
        waiting=waiting,
    )


def render_limits(out: LimitsOut) -> list[str]:
    if not out.messages and out.count_tokens is None:
        lines = [
            "Rate limits: not known yet (no --tier given, and no response has stated them); "
            "nothing waits before the first response."
        ]
    else:
        figures = ", ".join(f"{b.per_minute:,} {_NAMES[k]}" for k, b in out.messages.items())
        available = ", ".join(f"{b.available:,}" for b in out.messages.values())
        line = f"Rate limits ({out.source}): "
        line += f"{figures} a minute, available now {available}" if figures else "not known"
        if out.count_tokens is not None:
            line += (
                f"; token counting {out.count_tokens.per_minute:,} requests a minute, "
                f"{out.count_tokens.available:,} available"
            )
        lines = [line + "."]
    for w in out.waiting:
        what = (
            "for their turn"
            if w.waiting_for == "their turn"
            else "for the token-counting bucket"
            if w.waiting_for == "count_tokens"
            else f"for {_BUCKETS.get(w.waiting_for, w.waiting_for)}"
        )
        when = f", {about_seconds(w.seconds)}" if w.seconds is not None else ""
        lines.append(f"Waiting: {plural(w.requests, 'request')} {what}{when}.")
    return lines


def _buckets(limits: RateLimits, now: float) -> dict[str, BucketOut]:
    return {
        kind: BucketOut(per_minute=b.per_minute, available=max(0, int(b.available(now))))
        for kind, b in limits.buckets.items()
    }


def _source(messages: RateLimits, counting: RateLimits) -> str:
    if messages.buckets:
        return messages.source
    return counting.source if counting.buckets else "not known"
