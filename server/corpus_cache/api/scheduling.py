"""Which waiting request is sent next, and when the others will be: the admission policy of
the one caller. Pure: data in, data out; the waiting itself is the caller's
(api/scheduler.py).

Everything that spends from the rate-limit buckets waits in one queue: questions,
background work (warming, keep-warm, pre-warm, staged builds) and token counting. Messages
draw on the requests, input-token and output-token buckets of the model's class; counting
draws on a requests bucket of its own (`count_tokens`), so it never holds a question up.

The order: questions first, then background work, then counting; by arrival within each.
Background work that has waited `AGING_SECONDS` is ranked as a question that arrived when
it did, so a steady stream of questions cannot starve it. The requests of one fan-out
question (a `group`) keep their first member's place and go in order, together if the
buckets hold them all, else paced one after the other.

Nothing overtakes a request that is waiting for a bucket it needs: a request ranked after
it may go now only if it touches none of the buckets the earlier one waits on (a small
warm request must not take the input tokens a question is waiting for, nor a small
question those a large one is waiting for, which would starve the large one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from corpus_cache.api.ratelimits import KINDS, Demand, Kind, RateLimits

Priority = Literal["question", "background", "count"]
Pool = Literal["messages", "count_tokens"]

RANK: dict[Priority, int] = {"question": 0, "background": 1, "count": 2}
# Long enough for a burst of questions to go first; short against the minutes a cache
# build or a keep-warm request may wait.
AGING_SECONDS = 120.0
# A moment past the computed instant, so that the API's bucket, refilled on its own clock
# from its own last update (floats at epoch scale), has surely reached the demand.
_STEP = 1e-3


@dataclass(frozen=True)
class Waiting:
    """A request waiting to be sent. `ticket`: its place in arrival order; `arrived`: on
    the caller's clock; `group`: the fan-out question it is part of, if any."""

    ticket: int
    priority: Priority
    pool: Pool
    demand: Demand
    arrived: float
    group: int | None = None


@dataclass(frozen=True)
class Admissions:
    """What to do now: send `admit` (in that order), refuse `refused` (more than a bucket
    ever holds, as its figures are now known), and look again at `wake_at` (None: nothing
    is left waiting). `buckets`: after taking what is admitted."""

    admit: tuple[int, ...]
    refused: tuple[int, ...]
    wake_at: float | None
    buckets: Mapping[Pool, RateLimits]


def rank(waiting: Waiting, now: float) -> int:
    """0 for questions, 1 for background work, 2 for counting; aged work ranks as a question."""
    if waiting.priority != "question" and now - waiting.arrived >= AGING_SECONDS:
        return RANK["question"]
    return RANK[waiting.priority]


def ordered(queue: Iterable[Waiting], now: float) -> list[Waiting]:
    """The queue in the order it is served: by rank, then by arrival, a fan-out question's
    requests together at their first one's place."""
    waiting = list(queue)
    lead: dict[int, int] = {}
    for w in waiting:
        if w.group is not None:
            lead[w.group] = min(lead.get(w.group, w.ticket), w.ticket)
    return sorted(
        waiting,
        key=lambda w: (rank(w, now), lead[w.group] if w.group is not None else w.ticket, w.ticket),
    )


def touches(waiting: Waiting, buckets: Mapping[Pool, RateLimits]) -> set[tuple[Pool, Kind]]:
    """The known buckets `waiting` takes something from."""
    known = buckets.get(waiting.pool, RateLimits.unknown()).buckets
    return {(waiting.pool, k) for k in KINDS if k in known and waiting.demand.of(k) > 0}


def admissions(
    queue: Iterable[Waiting], buckets: Mapping[Pool, RateLimits], now: float
) -> Admissions:
    """Which of `queue` go now, given the buckets at `now` (see the module's text)."""
    state = dict(buckets)
    admit: list[int] = []
    refused: list[int] = []
    held: set[tuple[Pool, Kind]] = set()  # buckets an earlier request is waiting on
    wake_at: float | None = None
    for w in ordered(queue, now):
        limits = state.get(w.pool, RateLimits.unknown())
        wait = limits.wait_seconds(w.demand, now)
        if wait is None:
            refused.append(w.ticket)
            continue
        needs = touches(w, state)
        if needs & held:
            continue
        if wait <= 0:
            admit.append(w.ticket)
            state[w.pool] = limits.taken(w.demand, now)
        else:
            held |= needs
            at = now + wait + _STEP
            wake_at = at if wake_at is None else min(wake_at, at)
    return Admissions(tuple(admit), tuple(refused), wake_at, state)


def schedule(
    queue: Sequence[Waiting], buckets: Mapping[Pool, RateLimits], now: float
) -> dict[int, float | None]:
    """When each request of `queue` would be sent if nothing else arrived and every request
    took what it reserves (None: never). An estimate: responses give back unused output
    and their headers may say the buckets hold more than was assumed."""
    starts: dict[int, float | None] = {}
    left = list(queue)
    state: Mapping[Pool, RateLimits] = buckets
    t = now
    # A round sends all that fits at `t`; nothing ranked after a waiting request takes
    # from its buckets, so its wait holds and the next round, at its wake-up time, sends
    # it or (aging reordered the queue, once per request at most) another.
    for _ in range(3 * len(left) + 3):
        if not left:
            break
        decided = admissions(left, state, t)
        for ticket in decided.admit:
            starts[ticket] = t
        for ticket in decided.refused:
            starts[ticket] = None
        gone = {*decided.admit, *decided.refused}
        left = [w for w in left if w.ticket not in gone]
        state = decided.buckets
        if decided.wake_at is None:
            break
        t = max(decided.wake_at, t + _STEP)
    for w in left:
        starts.setdefault(w.ticket, None)
    return starts


def limiting_kind(waiting: Waiting, buckets: Mapping[Pool, RateLimits], now: float) -> Kind | None:
    """The bucket `waiting` waits longest for on its own, or None if it would fit now (it
    waits behind requests ranked before it)."""
    limits = buckets.get(waiting.pool, RateLimits.unknown())
    longest: tuple[float, Kind] | None = None
    for kind, bucket in limits.buckets.items():
        wait = bucket.wait_for(waiting.demand.of(kind), now)
        if wait is not None and wait > 0 and (longest is None or wait > longest[0]):
            longest = (wait, kind)
    return longest[1] if longest is not None else None
