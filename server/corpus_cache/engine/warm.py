"""Writing the cache ahead of a question.

For each shard laid out with breakpoints, one request carrying exactly the prefix an ask
would send, with `max_tokens: 0`: nothing is generated, the cache is written (or, if it
was still warm, read and its time to live refreshed). Each request is recorded in the
ledger as kind "warm", priced like any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import anyio

from corpus_cache.accounting.ledger import RequestRecord
from corpus_cache.api.backend import API_FAILURES, backend_of_response, describe_api_error
from corpus_cache.cache.keeping import KeepWarm, keep_warm_plan
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.engine.core import Engine
from corpus_cache.errors import ApiCallError
from corpus_cache.models.pricing import Usage, cost_usd, uncached_cost_usd
from corpus_cache.plan.layout import Shard

# After the last breakpoint, so it is never cached and its wording does not matter.
WARM_QUESTION = "(Warming the cache: no answer is wanted.)"


@dataclass(frozen=True)
class Warmed:
    shard: int
    usage: Usage
    cost_usd: float
    uncached_cost_usd: float
    latency_ms: float
    unrecorded: str | None = None  # Recorded.unrecorded: the ledger could not write the row


async def warm(engine: Engine, corpus: Corpus | None = None) -> list[Warmed]:
    """Warm every cached shard of `corpus` (default: the live one), in shard order.

    Shards below the model's minimum cacheable length have nothing to warm and are left
    out; so is an empty corpus."""
    corpus = corpus if corpus is not None else engine.current
    return [
        await warm_shard(engine, corpus, shard, "warm")
        for shard in corpus.shards
        if shard.plan.cached
    ]


@dataclass(frozen=True)
class Prewarmed:
    at: float
    shards: tuple[int, ...]
    cost_usd: float


def prewarm_after_changes(engine: Engine) -> None:
    """With `prewarm` set, warm each shard whose cached prefix a refresh changed, and keep
    what it cost on the engine for cache_status."""

    async def on_swap(old: Corpus | None, new: Corpus) -> None:
        if old is None or not engine.settings.prewarm:
            return
        changed = [
            shard
            for shard in new.shards
            if shard.plan.cached
            and new.anchor_ids.get(shard.number) != old.anchor_ids.get(shard.number)
        ]
        if not changed:
            return
        warmed = [await warm_shard(engine, new, shard, "warm") for shard in changed]
        engine.last_prewarm = Prewarmed(
            engine.clock(), tuple(w.shard for w in warmed), sum(w.cost_usd for w in warmed)
        )

    engine.on_swap(on_swap)


async def keep_warm_due(engine: Engine) -> list[Warmed]:
    """Send the keep-warm requests the policy has due now (kind "keep-warm"). A shard whose
    request fails stays due; the others are still sent. Raises the first failure after."""
    sent = []
    failed: list[ApiCallError] = []
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
        except ApiCallError as exc:
            failed.append(exc)
            continue
    if len(failed) > 1:
        raise ApiCallError(f"{len(failed)} keep-warm requests failed; the first: {failed[0]}")
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
    kind: str,
    *,
    through: int | None = None,
    upgrade: bool = False,
) -> Warmed:
    """One `max_tokens: 0` request carrying exactly the prefix an ask on `shard` would;
    `through`: only the prefix through that anchor (a keep-warm read); `upgrade`: marking
    the stable part's end and the corpus's end with 1-hour breakpoints."""
    # max_tokens 0 is set after: the request must be what an ask would send.
    marked = None
    if upgrade:
        plan = shard.plan
        marked = sorted({a for a in (plan.stable_anchor, plan.anchors[-1]) if a is not None})
    params, answered = engine.request_for(
        corpus, shard, WARM_QUESTION, max_tokens=engine.settings.max_answer_tokens,
        through=through, marked=marked, ttl="1h" if upgrade else None,
    )  # fmt: skip
    params["max_tokens"] = 0
    record = RequestRecord(
        at=engine.clock(), kind=kind, corpus=engine.corpus_key, model=engine.model.id,
        backend=engine.backend.kind, outcome="ok", snapshot=corpus.snapshot.version,
        shard=shard.number,
    )  # fmt: skip
    started = time.perf_counter()
    try:
        raw = await engine.backend.client.messages.with_raw_response.create(**params)
        message = await raw.parse()
    except API_FAILURES as exc:
        engine.record_failure(kind, corpus, shard.number, started, exc)
        raise ApiCallError(f"warming the cache failed: {describe_api_error(exc)}") from exc
    except anyio.get_cancelled_exc_class():
        engine.record_failure(kind, corpus, shard.number, started, None)
        raise
    latency = (time.perf_counter() - started) * 1000
    usage = Usage.from_api(message.usage)
    ttl = answered(usage)
    cost = cost_usd(usage, engine.model)
    uncached = uncached_cost_usd(usage, engine.model)
    recorded = engine.ledger.record(
        replace(
            record, backend=backend_of_response(raw.headers, engine.backend.kind),
            usage=usage, cost_usd=cost, uncached_cost_usd=uncached,
            message_id=message.id, latency_ms=latency, ttl=ttl,
        )
    )  # fmt: skip
    return Warmed(shard.number, usage, cost, uncached, latency, recorded.unrecorded)
