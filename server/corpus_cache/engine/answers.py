"""Answers: what one shard's request returned (`ShardAnswer`), and the answer to a question
(`Answer`), merged from the shards it was asked of. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from corpus_cache.api.request import Citation
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.models.pricing import Usage
from corpus_cache.plan.layout import Shard


@dataclass(frozen=True)
class Answer:
    text: str
    citations: tuple[Citation, ...]
    usage: Usage
    cost_usd: float
    uncached_cost_usd: float
    backend: str
    model: str
    snapshot_version: int
    snapshot_time: float
    latency_ms: float
    shards: tuple[int, ...] = (0,)
    corpus_share: float = 1.0  # share of the corpus's tokens the answering shards hold
    documents_not_consulted: int = 0
    estimated_usd: float = 0.0  # what the question was expected to cost before it was sent
    session: str | None = None  # the conversation this question belongs to, if any
    session_turns: int = 0  # questions the session holds, this one included
    session_dropped_turns: int = 0  # oldest turns dropped before this question, to fit
    session_snapshot_is_live: bool = True  # False: the folder changed since the session began
    message_ids: tuple[str, ...] = ()  # the API's id of each shard's response, as the ledger has it
    # Why the ledger could not record a shard's row, and where the row waits to be added.
    unrecorded: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardAnswer:
    shard: Shard
    text: str
    citations: tuple[Citation, ...]
    usage: Usage
    cost_usd: float
    uncached_cost_usd: float
    backend: str
    latency_ms: float
    raw_text: str = ""  # the answer's text as the API gave it, for a session's next turn
    marked: tuple[int, ...] = ()  # the anchors the request marked
    message_id: str = ""
    unrecorded: str | None = None  # Recorded.unrecorded: the ledger could not write the row
    bound_usd: float = 0.0  # the most the request could cost, as the daily cap checked it


def merge(corpus: Corpus, parts: list[ShardAnswer], model: str) -> Answer:
    """One answer from the shards' answers, in the order given (best ranked first)."""
    if len(parts) == 1:
        text = parts[0].text
    else:
        text = "\n\n".join(f"From shard {p.shard.number}:\n{p.text}" for p in parts)
    usage = Usage(
        input_tokens=sum(p.usage.input_tokens for p in parts),
        cache_read_tokens=sum(p.usage.cache_read_tokens for p in parts),
        cache_write_5m_tokens=sum(p.usage.cache_write_5m_tokens for p in parts),
        cache_write_1h_tokens=sum(p.usage.cache_write_1h_tokens for p in parts),
        output_tokens=sum(p.usage.output_tokens for p in parts),
    )
    covered = sum(p.shard.corpus_tokens for p in parts)
    consulted = {path for p in parts for path in p.shard.plan.order}
    total = corpus.layout.total_tokens
    return Answer(
        text=text,
        citations=tuple(c for p in parts for c in p.citations),
        usage=usage,
        cost_usd=sum(p.cost_usd for p in parts),
        uncached_cost_usd=sum(p.uncached_cost_usd for p in parts),
        backend=parts[0].backend,
        model=model,
        snapshot_version=corpus.snapshot.version,
        snapshot_time=corpus.snapshot.created_at,
        latency_ms=max(p.latency_ms for p in parts),
        shards=tuple(p.shard.number for p in parts),
        corpus_share=covered / total if total else 1.0,
        documents_not_consulted=len(corpus.snapshot.documents) - len(consulted),
        message_ids=tuple(p.message_id for p in parts),
        unrecorded=tuple(dict.fromkeys(p.unrecorded for p in parts if p.unrecorded)),
    )


@dataclass(frozen=True)
class Warmed:
    """What one warming or keep-warm request wrote or read, and cost."""

    shard: int
    usage: Usage
    cost_usd: float
    uncached_cost_usd: float
    latency_ms: float
    unrecorded: str | None = None  # why the ledger could not record it yet, and where it waits


@dataclass(frozen=True)
class Prewarmed:
    """The last pre-warm after a change in the folder (--prewarm)."""

    at: float
    shards: tuple[int, ...]
    cost_usd: float
