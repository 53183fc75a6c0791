"""The engine: the live corpus (snapshot, token counts, plan, search index) and the work
the tools do with it: ask Claude, search, read, report."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import anyio

from .backend import Backend, backend_of_response, describe_api_error
from .catalog import Catalog, ModelSpec
from .config import Settings
from .corpus.documents import Document, Snapshot
from .corpus.scan import ScanOptions, scan
from .errors import (
    ApiCallError,
    CorpusCacheError,
    CorpusTooLargeError,
    InvalidArgumentError,
    NotInCorpusError,
)
from .ledger import Ledger, RequestRecord, Totals
from .paths import corpus_relative
from .plan.anchors import select_breakpoints
from .plan.budget import default_budget
from .plan.layout import MAX_CORPUS_BREAKPOINTS, Layout, Shard, plan_corpus
from .plan.route import rank_shards
from .plan.stability import DocInfo
from .pricing import Usage, cost_usd, uncached_cost_usd
from .request import INSTRUCTIONS, Citation, build_request, map_answer
from .search import Hit, SearchIndex
from .tokens import TokenCounter, content_key

log = logging.getLogger(__name__)

QUESTION_RESERVE = 2_000  # tokens kept free in the window for the question
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True)
class Corpus:
    """Everything a question is answered against; replaced whole, never changed."""

    snapshot: Snapshot
    tokens: dict[str, int]
    layout: Layout
    index: SearchIndex = field(repr=False)
    # Per shard: anchor position -> identity of the cache entry its prefix would have.
    anchor_ids: dict[int, dict[int, str]] = field(default_factory=dict, repr=False)

    @property
    def corpus_tokens(self) -> int:
        return sum(self.tokens.values())

    @property
    def shards(self) -> tuple[Shard, ...]:
        return self.layout.shards

    def shard(self, number: int) -> Shard:
        return next(s for s in self.layout.shards if s.number == number)


SwapListener = Callable[["Corpus | None", "Corpus"], Awaitable[None]]


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


@dataclass(frozen=True)
class _ShardAnswer:
    shard: Shard
    text: str
    citations: tuple[Citation, ...]
    usage: Usage
    cost_usd: float
    uncached_cost_usd: float
    backend: str
    latency_ms: float


@dataclass(frozen=True)
class _History:
    """What the engine has seen of one document, for the planner."""

    key: str
    first_seen: float
    last_change: float
    edits: int


class Engine:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        backend: Backend,
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.model: ModelSpec = catalog.get(settings.model)
        self.backend = backend
        self.ledger = ledger
        self.counter = TokenCounter(backend.client, self.model.id, ledger)
        self.clock = clock
        self._history: dict[str, _History] = {}
        self._corpus: Corpus | None = None
        self._version = 0
        self._instructions_tokens: int | None = None
        self._refreshing = anyio.Lock()
        self._entries: dict[str, float] = {}  # anchor identity -> when we expect it to expire
        self._turn = 0
        self._listeners: list[SwapListener] = []

    def on_swap(self, listener: SwapListener) -> None:
        """Call `listener(old, new)` after every swap of the live corpus (old is None at first)."""
        self._listeners.append(listener)

    @property
    def corpus_key(self) -> str:
        return str(self.settings.corpus)

    @property
    def current(self) -> Corpus:
        if self._corpus is None:
            raise RuntimeError("the corpus has not been indexed yet: call refresh() first")
        return self._corpus

    async def refresh(self, progress: Callable[[int, int], None] | None = None) -> Corpus:
        """Rescan the folder and swap in a new corpus; unchanged files are not re-read.
        Refreshes run one at a time; questions keep the corpus they started with."""
        async with self._refreshing:
            old = self._corpus
            new = await self._rebuild(progress)
            self._corpus = new  # one assignment: a question sees the old corpus or the new
        for listener in self._listeners:
            await listener(old, new)
        return new

    async def _rebuild(self, progress: Callable[[int, int], None] | None) -> Corpus:
        previous = {d.path: d for d in self._corpus.snapshot.documents} if self._corpus else {}
        result = scan(
            self.settings.corpus, ScanOptions(max_file_bytes=self.settings.max_file_bytes), previous
        )
        tokens = await self.counter.count(result.documents, progress)
        if self._instructions_tokens is None:
            self._instructions_tokens = await self.counter.count_system(INSTRUCTIONS)
        now = self.clock()
        docs = self._observe(result.documents, tokens, now)
        layout = plan_corpus(
            docs,
            min_cacheable_tokens=self.model.min_cacheable_tokens,
            instructions_tokens=self._instructions_tokens,
            budget_tokens=self.budget_tokens,
            now=now,
            previous=self._corpus.layout if self._corpus else None,
        )
        self._version += 1
        snapshot = Snapshot(
            self.settings.corpus, self._version, now, result.documents, result.skipped
        )
        corpus = Corpus(
            snapshot, tokens, layout, SearchIndex(snapshot), _anchor_ids(layout, self.model.id)
        )
        log.info(
            "corpus v%d: %d documents, %d tokens, %d left out; %d shard(s): %s",
            snapshot.version, len(snapshot.documents), corpus.corpus_tokens,
            len(snapshot.skipped), len(layout.shards), layout.shards[0].plan.note,
        )  # fmt: skip
        return corpus

    @property
    def budget_tokens(self) -> int:
        if self.settings.budget_tokens is not None:
            return self.settings.budget_tokens
        return default_budget(self.model, self.settings.reserve_tokens)

    def _observe(
        self, documents: tuple[Document, ...], tokens: dict[str, int], now: float
    ) -> list[DocInfo]:
        """Update the edit history from a scan: a changed key is an edit, seen now."""
        history: dict[str, _History] = {}
        docs: list[DocInfo] = []
        for doc in documents:
            key = content_key(doc)
            seen = self._history.get(doc.path)
            if seen is None:
                seen = _History(key, now, min(now, doc.mtime_ns / 1e9), 0)
            elif seen.key != key:
                seen = _History(key, seen.first_seen, now, seen.edits + 1)
            history[doc.path] = seen
            docs.append(
                DocInfo(
                    doc.path, tokens[doc.path], key, seen.last_change, seen.edits, seen.first_seen
                )
            )
        self._history = history
        return docs

    # --- ask --------------------------------------------------------------------------

    def route(self, question: str, corpus: Corpus, fan_out: int) -> list[Shard]:
        """The shards most likely to hold the answer, best first (all of one, if one)."""
        if len(corpus.shards) == 1:
            return list(corpus.shards)
        hits = corpus.index.search(question, 50)
        shard_of = corpus.layout.shard_of()
        ranked = rank_shards(
            ((h.passage.path, h.score) for h in hits), shard_of, [s.number for s in corpus.shards]
        )
        return [corpus.shard(n) for n in ranked[: max(1, fan_out)]]

    async def ask(self, question: str, fan_out: int | None = None) -> Answer:
        """Answer from the shard(s) the question routes to, in parallel, merged in rank order."""
        question = question.strip()
        if not question:
            raise InvalidArgumentError("question is empty: ask something about the documents")
        if fan_out is not None and fan_out < 1:
            raise InvalidArgumentError("fan_out must be at least 1")
        corpus = self.current  # this question's snapshot, whatever refreshes happen meanwhile
        if not corpus.snapshot.documents:
            raise NotInCorpusError(
                f"the corpus folder {self.settings.corpus} holds no documents to ask about"
            )
        chosen = self.route(question, corpus, fan_out or self.settings.fan_out)
        if len(chosen) == 1:
            return self._merge(corpus, [await self._ask_shard(question, corpus, chosen[0])])
        parts: dict[int, _ShardAnswer] = {}

        async def one(shard: Shard) -> None:
            parts[shard.number] = await self._ask_shard(question, corpus, shard)

        try:
            async with anyio.create_task_group() as group:
                for shard in chosen:
                    group.start_soon(one, shard)
        except BaseExceptionGroup as failures:
            # One shard failing fails the question; say why as the single-shard path would.
            first = _first_leaf(failures)
            if isinstance(first, CorpusCacheError):
                raise first from failures
            raise
        return self._merge(corpus, [parts[s.number] for s in chosen])

    async def _ask_shard(self, question: str, corpus: Corpus, shard: Shard) -> _ShardAnswer:
        plan = shard.plan
        window = self.model.context_window
        if plan.total_tokens + QUESTION_RESERVE + self.settings.max_answer_tokens > window:
            raise CorpusTooLargeError(
                f"shard {shard.number} is {plan.total_tokens:,} tokens, more than "
                f"{self.model.id}'s {window:,}-token window allows with room for a question "
                "and an answer; lower --budget-tokens"
            )
        ids = corpus.anchor_ids.get(shard.number, {})
        now = self.clock()
        alive = {a for a in plan.anchors if self._entries.get(ids[a], 0.0) > now}
        marked = select_breakpoints(
            plan.anchors, alive, slots=MAX_CORPUS_BREAKPOINTS, turn=self._turn
        )
        self._turn += 1
        params = build_request(
            plan, corpus.snapshot, question, model=self.model.id,
            max_tokens=self.settings.max_answer_tokens, marked=marked,
        )  # fmt: skip
        started = time.perf_counter()
        try:
            raw = await self.backend.client.messages.with_raw_response.create(**params)
            message = await raw.parse()
        except anthropic.APIError as exc:
            latency = (time.perf_counter() - started) * 1000
            self._record_failure("ask", corpus, exc, latency, shard.number)
            raise ApiCallError(describe_api_error(exc)) from exc
        latency = (time.perf_counter() - started) * 1000
        backend = backend_of_response(raw.headers, self.backend.kind)
        usage = Usage.from_api(message.usage)
        ttl = plan.blocks[-1].ttl if plan.blocks else None
        self._remember_entries(ids, alive, marked, usage, now, ttl)
        cost, uncached = cost_usd(usage, self.model), uncached_cost_usd(usage, self.model)
        self.ledger.record(
            RequestRecord(
                kind="ask", corpus=self.corpus_key, model=self.model.id, backend=backend,
                outcome="ok", usage=usage, cost_usd=cost, uncached_cost_usd=uncached,
                snapshot=corpus.snapshot.version, message_id=message.id, latency_ms=latency,
                shard=shard.number, ttl=ttl,
            )
        )  # fmt: skip
        mapped = map_answer(list(message.content), plan, corpus.snapshot)
        return _ShardAnswer(
            shard, mapped.text, mapped.citations, usage, cost, uncached, backend, latency
        )

    def _remember_entries(
        self,
        ids: dict[int, str],
        alive: set[int],
        marked: list[int],
        usage: Usage,
        now: float,
        ttl: str | None,
    ) -> None:
        """Track which anchors' entries live, from what this request marked and read."""
        if ttl is None:
            return
        expiry = now + TTL_SECONDS[ttl]
        if alive and usage.cache_read_tokens == 0:
            for anchor in alive:  # we thought them alive; the API did not: forget them
                self._entries.pop(ids[anchor], None)
            alive = set()
        for anchor in marked:
            self._entries[ids[anchor]] = expiry
        if alive and usage.cache_read_tokens:
            self._entries[ids[max(alive)]] = expiry  # the entry read was refreshed
        if len(self._entries) > 10_000:
            self._entries = {k: v for k, v in self._entries.items() if v > now}

    def _merge(self, corpus: Corpus, parts: list[_ShardAnswer]) -> Answer:
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
            model=self.model.id,
            snapshot_version=corpus.snapshot.version,
            snapshot_time=corpus.snapshot.created_at,
            latency_ms=max(p.latency_ms for p in parts),
            shards=tuple(p.shard.number for p in parts),
            corpus_share=covered / total if total else 1.0,
            documents_not_consulted=len(corpus.snapshot.documents) - len(consulted),
        )

    def _record_failure(
        self, kind: str, corpus: Corpus, exc: anthropic.APIError, latency: float, shard: int
    ) -> None:
        # A failed call bills nothing: no usage, no cost.
        self.ledger.record(
            RequestRecord(
                kind=kind, corpus=self.corpus_key, model=self.model.id,
                backend=self.backend.kind, outcome="error", snapshot=corpus.snapshot.version,
                latency_ms=latency, error=describe_api_error(exc), shard=shard,
            )
        )  # fmt: skip

    # --- local tools: no API call ------------------------------------------------------

    def search(self, query: str, limit: int) -> list[Hit]:
        if not query.strip():
            raise InvalidArgumentError("query is empty: pass words to look for")
        return self.current.index.search(query, limit)

    def document(self, path: str) -> Document:
        """A document of the current snapshot. Never reads the disk, so it cannot leave the
        corpus: only files the scan admitted are served."""
        relative = corpus_relative(path)
        snapshot = self.current.snapshot
        doc = snapshot.get(relative)
        if doc is not None:
            return doc
        for skipped in snapshot.skipped:
            if skipped.path.rstrip("/") == relative:
                raise NotInCorpusError(f"{relative} is not served: {skipped.reason}")
        raise NotInCorpusError(
            f"{relative} is not a document of this corpus; list_documents shows the paths"
        )

    def totals(self, since: float | None = None) -> Totals:
        return self.ledger.totals(self.corpus_key, since)

    def skipped_summary(self) -> dict[str, int]:
        reasons = Counter(_reason_kind(s.reason) for s in self.current.snapshot.skipped)
        return dict(sorted(reasons.items()))

    def block_of(self) -> dict[str, tuple[int, int]]:
        """(shard, block) of each document, blocks numbered from 1 within their shard."""
        return {
            path: (shard.number, number)
            for shard in self.current.shards
            for number, block in enumerate(shard.plan.blocks, start=1)
            for path in block.paths
        }

    def describe_layout(self) -> list[dict[str, Any]]:
        return [
            {
                "shard": shard.number,
                "block": number,
                "documents": len(block.paths),
                "tokens": block.tokens,
                "prefix_tokens": block.prefix_tokens,
                "ttl": block.ttl,
                "first": block.paths[0] if block.paths else None,
                "last": block.paths[-1] if block.paths else None,
            }
            for shard in self.current.shards
            for number, block in enumerate(shard.plan.blocks, start=1)
        ]

    # --- warming (warm.py) -------------------------------------------------------------

    def request_for(
        self, corpus: Corpus, shard: Shard, question: str, *, max_tokens: int
    ) -> tuple[dict[str, Any], Callable[[Usage], None]]:
        """The params an ask on `shard` would send now, with `max_tokens`, and the function
        to call with the usage the API returned, so the engine knows which entries live."""
        plan = shard.plan
        ids = corpus.anchor_ids.get(shard.number, {})
        now = self.clock()
        alive = {a for a in plan.anchors if self._entries.get(ids[a], 0.0) > now}
        marked = select_breakpoints(
            plan.anchors, alive, slots=MAX_CORPUS_BREAKPOINTS, turn=self._turn
        )
        self._turn += 1
        params = build_request(
            plan, corpus.snapshot, question, model=self.model.id, max_tokens=max_tokens,
            marked=marked,
        )  # fmt: skip
        ttl = plan.blocks[-1].ttl if plan.blocks else None

        def answered(usage: Usage) -> None:
            self._remember_entries(ids, alive, marked, usage, now, ttl)

        return params, answered


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _anchor_ids(layout: Layout, model: str) -> dict[int, dict[int, str]]:
    """For each shard, each anchor's entry identity: the model and every (path, content)
    before it, in order, as the API's prefix hash would see them."""
    ids: dict[int, dict[int, str]] = {}
    for shard in layout.shards:
        plan = shard.plan
        anchors = set(plan.anchors)
        running = hashlib.sha256(f"{model}\0{INSTRUCTIONS}".encode())
        ids[shard.number] = {}
        for position, (path, key) in enumerate(zip(plan.order, plan.keys, strict=True)):
            running.update(f"\0{path}\0{key}".encode())
            if position in anchors:
                ids[shard.number][position] = running.copy().hexdigest()
    return ids
