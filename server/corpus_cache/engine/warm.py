"""Writing the cache ahead of a question.

For each shard laid out with breakpoints, one request carrying exactly the prefix an ask
would send, with `max_tokens: 0`: nothing is generated, the cache is written (or, if it
was still warm, read and its time to live refreshed). Each request is recorded in the
ledger as kind "warm", priced like any other. Like every request that spends, it passes
the daily cap first (in the API caller): one the cap refuses is not sent, and is logged and
recorded as "refused".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from corpus_cache.api.prepared import RequestKind
from corpus_cache.cache.keeping import KeepWarm, keep_warm_plan
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.cache.prepare import Marking
from corpus_cache.engine.answers import Prewarmed, Warmed
from corpus_cache.engine.core import Engine
from corpus_cache.errors import ApiCallError, BeyondRateLimitError, BudgetExceededError
from corpus_cache.plan.layout import Shard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmRun:
    """The shards warmed, and the refusals of the daily cap for those that were not."""

    warmed: list[Warmed] = field(default_factory=list)
    refused: list[BudgetExceededError] = field(default_factory=list)


async def warm(engine: Engine, corpus: Corpus | None = None) -> WarmRun:
    """Warm every cached shard of `corpus` (default: the live one), in shard order; a shard
    the daily cap refuses is not sent (and the others are still tried).

    Shards below the model's minimum cacheable length have nothing to warm and are left
    out; so is an empty corpus."""
    corpus = corpus if corpus is not None else engine.current
    run = WarmRun()
    for shard in corpus.shards:
        if shard.plan.cached:
            try:
                run.warmed.append(await warm_or_build(engine, corpus, shard))
            except BudgetExceededError as refused:
                run.refused.append(refused)
    return run


async def warm_or_build(engine: Engine, corpus: Corpus, shard: Shard) -> Warmed:
    """One warming request for `shard`, or, when its write is more than one request may
    carry under the rate limits, its staged build (engine/build.py), slice by slice."""
    if engine.builder.needed(corpus, shard):
        built = await engine.builder.build(corpus, shard)
        if built is not None:
            return built
    return await warm_shard(engine, corpus, shard, "warm")


def prewarm_after_changes(engine: Engine) -> None:
    """With `prewarm` set, warm each shard whose cached prefix a refresh changed, and keep
    what it cost on the engine for cache_status. Only the engine that keeps the cache does
    (engine/keeper.py): of several servers on one folder, each sees the change, one warms."""

    async def on_swap(old: Corpus | None, new: Corpus) -> None:
        if old is None or not engine.settings.prewarm:
            return
        changed = [
            shard
            for shard in new.shards
            if shard.plan.cached
            and new.anchor_ids.get(shard.number) != old.anchor_ids.get(shard.number)
        ]
        if not changed or not engine.keeps_cache():
            return
        run = WarmRun()
        for shard in changed:
            if engine.builder.needed(new, shard):
                try:
                    if engine.builder.start(new, shard) is not None:
                        continue  # a staged build, in the background: the refresh goes on
                except BeyondRateLimitError as never:
                    log.warning("shard %d not pre-warmed: %s", shard.number, never)
                    continue
            try:
                run.warmed.append(await warm_or_build(engine, new, shard))
            except BudgetExceededError as refused:  # logged and recorded: serving goes on
                run.refused.append(refused)
        warmed = run.warmed
        if not warmed:
            return
        engine.last_prewarm = Prewarmed(
            engine.clock(), tuple(w.shard for w in warmed), sum(w.cost_usd for w in warmed)
        )

    engine.on_swap(on_swap)


async def keep_warm_due(engine: Engine) -> list[Warmed]:
    """Send the keep-warm requests the policy has due now (kind "keep-warm"). A shard whose
    request fails stays due; the others are still sent. Raises the first failure after."""
    sent = []
    failed: list[ApiCallError | BudgetExceededError] = []
    for shard in shards_due(engine, engine.clock()):
        corpus = engine.current
        planned = keep_warm_plan(engine.shard_state(corpus, shard), corpus, shard)
        if planned is None:
            continue
        try:
            if planned.action == "upgrade":
                corpus = engine.upgraded(corpus, shard)
                sent.append(await warm_shard(engine, corpus, shard, "keep-warm", upgrade=True))
            elif planned.action == "hold-tail":
                # The marker after the tail makes the request's breakpoints 1-hour ones.
                corpus = engine.tail_held(corpus, shard)
                sent.append(await warm_shard(engine, corpus, shard, "keep-warm"))
            else:
                sent.append(
                    await warm_shard(engine, corpus, shard, "keep-warm", through=planned.target)
                )
        except (ApiCallError, BudgetExceededError) as exc:
            failed.append(exc)
            continue
    if len(failed) > 1:
        raise ApiCallError(
            f"{len(failed)} keep-warm requests failed or were refused; the first: {failed[0]}"
        )
    if failed:
        raise failed[0]
    return sent


def next_ping_at(engine: Engine) -> float | None:
    """When the next keep-warm request is due, if the policy wants any."""
    if not engine.indexed:
        return None
    corpus = engine.current
    due = [p.due for s in corpus.shards if (p := _planned(engine, corpus, s)) is not None]
    return min(due) if due else None


def shards_due(engine: Engine, now: float) -> list[Shard]:
    """The shards of the live corpus whose keep-warm request is due at `now`."""
    if not engine.indexed:
        return []
    corpus = engine.current
    return [
        s for s in corpus.shards if (p := _planned(engine, corpus, s)) is not None and p.due <= now
    ]


def _planned(engine: Engine, corpus: Corpus, shard: Shard) -> KeepWarm | None:
    return keep_warm_plan(engine.shard_state(corpus, shard), corpus, shard)


async def warm_shard(
    engine: Engine,
    corpus: Corpus,
    shard: Shard,
    kind: RequestKind,
    *,
    through: int | None = None,
    upgrade: bool = False,
) -> Warmed:
    """One `max_tokens: 0` request carrying exactly the prefix an ask on `shard` would;
    `through`: only the prefix through that anchor (a keep-warm read); `upgrade`: marking
    the stable part's end and the corpus's end with 1-hour breakpoints. Raises
    BudgetExceededError, sending nothing, if the daily cap refuses it (recorded and logged
    by the API caller)."""
    marking = Marking(through=through)
    if upgrade:
        plan = shard.plan
        marked = sorted({a for a in (plan.stable_anchor, plan.anchors[-1]) if a is not None})
        marking = Marking(marked=marked, ttl="1h")
    request = engine.prepare_warming(kind, corpus, shard, marking)
    sent = await engine.caller.warm(request)
    engine.entries.answered(request, sent.usage)
    return Warmed(
        shard.number, sent.usage, sent.cost_usd, sent.uncached_cost_usd, sent.latency_ms,
        sent.ledger_note,
    )  # fmt: skip
