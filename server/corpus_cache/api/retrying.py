"""Whether to send a Messages API request again after an attempt failed, and when. Pure.

The one caller (api/caller.py) owns retries: the SDK's client makes one attempt per call,
so every attempt is a ledger row. What failed is a `Failure` (data, not an exception); the
decision is `next_wait`: seconds to wait before the next attempt, or None to give up.

What is retried, and why:
- an error status the API marks as passing (408, 409, 429, 5xx, or `x-should-retry:
  true`): the API refused it, so it billed nothing; `retry-after` says how long to wait;
- no connection made: nothing reached the API;
- sent, and no response began (a timeout, a connection lost): the API may be running it.
  A retry of a request that writes the cache would write it a second time (an entry is
  readable only once the response writing it has begun), so only a request that writes
  nothing is sent again;
- never a response that had begun (billed: a retry pays again), nor a 200 that could not
  be read (the same).

A rate limiter that knows the buckets' state can replace `wait` for a 429: the decision
whether to retry stays here.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

FailureKind = Literal["refused", "unreached", "unanswered", "garbled", "broken"]

INITIAL_WAIT = 0.5  # seconds before the first retry without a retry-after; doubled after
MAX_WAIT = 8.0
MAX_RETRY_AFTER = 4_294_967.0  # seconds a platform's sleep accepts at most
RETRIED_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Failure:
    """One failed attempt, as the caller saw it.

    `kind`: "refused" (an error status, `status`), "unreached" (no connection made),
    "unanswered" (sent, no response began), "garbled" (a 200 that could not be read),
    "broken" (a response that had begun and did not end). `headers`: the response's, when
    one arrived. `writes_cache`: the request writes cache entries not believed alive."""

    kind: FailureKind
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    writes_cache: bool = False


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the response asks to wait (`retry-after-ms`, then `retry-after` in seconds
    or as an HTTP date, against `now`), or None when it asks nothing usable."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(lowered[name]) * scale
        except (KeyError, ValueError):
            continue
    parsed = email.utils.parsedate_tz(lowered.get("retry-after", ""))
    return None if parsed is None else float(email.utils.mktime_tz(parsed) - now)


def worth_retrying(failure: Failure) -> bool:
    """Whether another attempt may succeed without paying twice (see the module's text)."""
    said = {k.lower(): v for k, v in failure.headers.items()}.get("x-should-retry")
    if failure.kind in ("broken", "garbled"):
        return False
    if said in ("true", "false"):
        return said == "true"
    if failure.kind == "refused":
        status = failure.status or 0
        return status in RETRIED_STATUSES or status >= 500
    if failure.kind == "unanswered":
        return not failure.writes_cache
    return True  # unreached


def next_wait(
    failure: Failure, attempt: int, *, max_retries: int, jitter: float, now: float
) -> float | None:
    """Seconds to wait before the attempt after `attempt` (1 for the first), or None to
    give up. `jitter` in [0, 1) shortens a backoff by up to a quarter (pass a random
    number); `now`: the time, for a `retry-after` given as a date."""
    if attempt > max_retries or not worth_retrying(failure):
        return None
    asked = retry_after(failure.headers, now)
    if asked is not None and asked > 0:
        return min(asked, MAX_RETRY_AFTER)
    backoff = min(INITIAL_WAIT * 2.0 ** min(attempt - 1, 1000), MAX_WAIT)
    return backoff * (1 - 0.25 * jitter)
