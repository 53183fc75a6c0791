"""Keeping the cache warm between questions: which keep-warm request each shard wants next,
and when. The policy (policy.py) says how long keeping an entry alive pays; this turns that
and what the engine believes alive into a request. warm.keep_warm_due sends them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from corpus_cache.cache import markers as marker_blocks
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.cache.policy import (
    FIVE_MINUTES,
    ONE_HOUR,
    PING_MARGIN,
    Decision,
    Prices,
    holding_tail_pays,
)
from corpus_cache.models.pricing import Ttl
from corpus_cache.plan.layout import Shard

ONE_HOUR_PING = ONE_HOUR - PING_MARGIN
FIVE_MINUTE_PING = FIVE_MINUTES - PING_MARGIN

KeepWarmAction = Literal["read", "upgrade", "hold-tail"]


@dataclass(frozen=True)
class ShardState:
    """What the keep-warm rules need to know of one shard, as the engine sees it now."""

    last_asked: float | None  # when its last question was asked, if ever
    decision: Decision  # the TTL policy's decision for it
    live: Mapping[int, Ttl]  # its anchors whose entries are alive, with their TTLs
    expires: Mapping[int, float]  # when each live anchor's entry expires
    gaps: Sequence[float]  # the gaps between its questions, for the policy
    edits_per_question: float
    prices: Prices
    fixed_ttl: Ttl | None  # --ttl 5m or 1h; None for auto


@dataclass(frozen=True)
class KeepWarm:
    """A keep-warm request due: when, the anchor it keeps, and how: reading the prefix
    through it, upgrading the stable part with a marker, or holding the tail with one."""

    due: float
    target: int
    action: KeepWarmAction


def keep_warm_plan(state: ShardState, corpus: Corpus, shard: Shard) -> KeepWarm | None:
    """The keep-warm request the policy wants for `shard` next, and when.

    - A 1-hour entry is alive: read it just before it expires, sending only the prefix
      through it, so the request never writes.
    - Only 5-minute entries are alive and the policy wants 1 hour (or upgrades): just
      before the furthest expires, add a marker block after the stable part and write
      a 1-hour breakpoint on it. The request reads the live prefix through the lookback
      and pays the 1-hour price for the marker and what follows it only.
    - Only 5-minute entries, kept warm by the policy: read the furthest before it expires.
    - The stable part is a 1-hour entry, the tail after it a 5-minute one (the last
      question wrote it, after an edit): before the tail expires, add a marker after
      it, if the read of the prefix costs less than writing the tail again after the
      silence is expected to (policy.holding_tail_pays).

    Only while that is within the reach the policy pays for: the entry's life after
    the last question, plus its pings."""
    last = state.last_asked
    plan = shard.plan
    if last is None or not plan.cached:
        return None
    decision, live = state.decision, state.live
    if not live:
        return None  # nothing alive to keep: a request would be a write
    long = [a for a, ttl in live.items() if ttl == "1h"]
    action: KeepWarmAction
    if long:
        target, action = max(long), "read"
        if _tail_worth_holding(state, shard):
            target, action = plan.anchors[-1], "hold-tail"
    elif decision.upgrade or decision.stable_ttl == "1h":
        target, action = max(live), "upgrade"
    elif decision.max_pings:
        target, action = max(live), "read"
    else:
        return None
    due = state.expires[target] - PING_MARGIN
    if due >= _reach(last, decision):
        return None
    if action == "upgrade" and not _can_upgrade(corpus, shard):
        return None
    return KeepWarm(due, target, action)


def _reach(last_question: float, decision: Decision) -> float:
    """How long after the last question the policy pays to keep the entry alive."""
    hour, five = ONE_HOUR_PING, FIVE_MINUTE_PING
    if decision.upgrade:
        return last_question + five + hour * (1 + decision.max_pings)
    if decision.stable_ttl == "1h":
        return last_question + hour * (1 + decision.max_pings)
    return last_question + five * (1 + decision.max_pings)


def _tail_worth_holding(state: ShardState, shard: Shard) -> bool:
    plan, live = shard.plan, state.live
    end, stable = plan.anchors[-1], plan.stable_anchor
    if state.fixed_ttl == "5m" or stable is None or end == stable:
        return False
    if live.get(end) != "5m" or live.get(stable) != "1h":
        return False
    # What the first question after the silence would write again: all after the
    # furthest 1-hour entry (the stable part, or an earlier tail's marker).
    held = plan.tokens_through(max(a for a, ttl in live.items() if ttl == "1h"))
    return holding_tail_pays(
        state.gaps, stable=held, tail=plan.total_tokens - held, prices=state.prices,
        edits_per_question=state.edits_per_question, pings=state.decision.max_pings,
    )  # fmt: skip


def _can_upgrade(corpus: Corpus, shard: Shard) -> bool:
    stable = shard.plan.stable_anchor
    return stable is not None and marker_blocks.can_add(
        corpus.markers.get(shard.number, {}), stable
    )
