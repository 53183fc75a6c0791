"""Preparing one request: which anchors it marks, with which TTLs, and its params, decided
once from what is believed alive and the policy's decision, as one `PreparedRequest`. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from corpus_cache.api.prepared import PreparedRequest, RequestKind
from corpus_cache.api.request import build_request
from corpus_cache.api.spending import request_bound
from corpus_cache.cache import markers as marker_blocks
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.cache.policy import Decision, anchor_ttls
from corpus_cache.models.catalog import ModelSpec
from corpus_cache.models.pricing import Ttl
from corpus_cache.plan.anchors import select_breakpoints
from corpus_cache.plan.layout import MAX_BREAKPOINTS, Plan, Shard


@dataclass(frozen=True)
class Marking:
    """How a request marks its breakpoints, when not by the policy's defaults."""

    marked: Sequence[int] | None = None  # these anchors (a session's follow-up: its first's)
    through: int | None = None  # send the documents through this anchor only (a keep-warm)
    ttl: Ttl | None = None  # this TTL on every breakpoint (an upgrade asks 1 hour)
    slots: int = MAX_BREAKPOINTS  # how many anchors at most (a session leaves one free)


BY_POLICY = Marking()  # what the policy and the entries believed alive decide


def prepare_request(
    kind: RequestKind,
    corpus: Corpus,
    shard: Shard,
    question: str,
    *,
    model: ModelSpec,
    max_tokens: int,
    live: Mapping[int, Ttl],
    decision: Decision | None,
    turn: int,
    now: float,
    marking: Marking = BY_POLICY,
    conversation: Sequence[tuple[str, str]] = (),
    previous_message_id: str | None = None,
) -> PreparedRequest:
    """The request an ask on `shard` of `corpus` sends now.

    `live`: the shard's anchors believed alive, with their TTLs; `decision`: the TTL
    policy's for the shard (None only with `marking.ttl`); `turn`: which rotation of the
    lookback's reach to mark (plan/anchors.select_breakpoints); `previous_message_id`: the
    shard's last answer, for the API's cache diagnostics (questions only)."""
    plan = shard.plan
    if marking.through is not None:
        plan = replace(plan, blocks=plan.blocks[: plan.anchors.index(marking.through) + 1])
    live = {a: t for a, t in live.items() if a in plan.anchors}
    alive = frozenset(live)
    markers = corpus.markers.get(shard.number, {})
    marked = marking.marked
    if marked is None:
        stable = plan.stable_anchor
        marked = select_breakpoints(
            plan.anchors, set(alive), slots=marking.slots, turn=turn,
            keep=stable, markers=markers, lookback=model.cache_lookback,
            # A marker just added after the stable part: its 1-hour breakpoint is the point.
            must=stable if stable in markers and stable not in alive else None,
        )  # fmt: skip
    ttls: dict[int, Ttl]
    if marking.ttl is not None:
        ttls = dict.fromkeys(plan.anchors, marking.ttl)
    else:
        assert decision is not None, "a request marked by the policy needs its decision"
        stable = shard.plan.stable_anchor
        ttls = anchor_ttls(
            plan.anchors, tail_start=plan.tail_start, decision=decision,
            stable_held=stable is not None and live.get(stable) == "1h",
            held_through=marker_blocks.held_through(markers),
        )  # fmt: skip
    params = build_request(
        plan, corpus.snapshot, question, model=model.id, max_tokens=max_tokens,
        marked=list(marked), ttls=ttls, conversation=conversation,
        superseded=corpus.superseded, markers=markers,
    )  # fmt: skip
    if kind == "ask":
        params["diagnostics"] = {"previous_message_id": previous_message_id}
    bound = request_bound(params, shard.plan.sizes, plan.instructions_tokens, model)
    return PreparedRequest(
        kind=kind,
        shard=shard.number,
        snapshot=corpus.snapshot.version,
        params=params,
        marked=tuple(marked),
        ttls=ttls,
        identities=corpus.anchor_ids.get(shard.number, {}),
        alive=alive,
        corpus_end=plan.anchors[-1] if plan.anchors else None,
        prepared_at=now,
        bound=bound,
        estimate_usd=bound.usd(model),
        read_tokens=max(
            (
                block.prefix_tokens
                # No anchors at all when the plan is not cached.
                for anchor, block in zip(plan.anchors, plan.blocks, strict=False)
                if anchor in alive and anchor <= max(marked, default=-1)
            ),
            default=0,
        ),
        prefix=_counted_prefix(plan, marked, markers, conversation),
    )


def _counted_prefix(
    plan: Plan, marked: Sequence[int], markers: Mapping[int, int], conversation: Sequence[object]
) -> tuple[tuple[str, str], ...] | None:
    """The documents through the last breakpoint, if nothing else is there that a count
    of the documents leaves out: a marker block, an outdated copy (and the note on the
    copy after it), a conversation (whose breakpoint comes last)."""
    if not marked or conversation or not plan.cached:
        return None
    last = max(marked)
    if any(p <= last for p in plan.superseded) or any(p <= last and n for p, n in markers.items()):
        return None
    return tuple(zip(plan.order[: last + 1], plan.keys[: last + 1], strict=True))
