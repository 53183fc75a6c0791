"""The engine: the live corpus (snapshot, token counts, plan, search index) and the work
the tools do with it: ask Claude, search, read, report."""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
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
    BudgetExceededError,
    CorpusCacheError,
    CorpusTooLargeError,
    InvalidArgumentError,
    NotInCorpusError,
)
from .ledger import Ledger, RequestRecord, Totals
from .paths import corpus_relative
from .plan.anchors import select_breakpoints
from .plan.budget import default_budget
from .plan.layout import MAX_CORPUS_BREAKPOINTS, Layout, Plan, Shard, Ttl, plan_corpus
from .plan.route import rank_shards
from .plan.stability import DocInfo
from .policy import Decision, Prices, decide
from .pricing import Usage, cost_usd, project_question, uncached_cost_usd
from .request import INSTRUCTIONS, Citation, build_request, map_answer, marked_anchors
from .search import Hit, SearchIndex
from .sessions import NEW, Session, Sessions, Turn, estimate_tokens, trim_turns
from .tokens import TokenCounter, content_key

log = logging.getLogger(__name__)

QUESTION_RESERVE = 2_000  # tokens kept free in the window for the question
DAY_SECONDS = 86_400.0
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
    estimated_usd: float = 0.0  # what the question was expected to cost before it was sent
    session: str | None = None  # the conversation this question belongs to, if any
    session_turns: int = 0  # questions the session holds, this one included
    session_dropped_turns: int = 0  # oldest turns dropped before this question, to fit
    session_snapshot_is_live: bool = True  # False: the folder changed since the session began


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
    raw_text: str = ""  # the answer's text as the API gave it, for a session's next turn
    marked: tuple[int, ...] = ()  # the anchors the request marked


@dataclass
class _Pin:
    """What a session is bound to: the corpus and shard of its first question, and the
    anchors that question's request marked (set once it is answered)."""

    corpus: Corpus
    shard: Shard
    marked: tuple[int, ...] | None = None


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
        self._asked: dict[int, list[float]] = self._asked_before()  # shard -> question times
        self.last_prewarm: Any = None  # warm.Prewarmed, after a change, with --prewarm
        self._pings: dict[int, tuple[float, int]] = {}  # shard -> (after question at, sent)
        self._listeners: list[SwapListener] = []
        self._sessions: Sessions[_Pin] = Sessions(
            idle_seconds=settings.session_idle_minutes * 60,
            max_sessions=settings.max_sessions,
            clock=clock,
        )
        # Cold prefixes being written, by (shard, anchor identities): set once the writing
        # response has begun, when its entries become readable.
        self._writing: dict[tuple[int, tuple[str, ...]], anyio.Event] = {}
        self._pending_usd = 0.0  # estimates of questions sent and not yet recorded
        self._last_message: dict[int, str] = {}  # shard -> last answer's id, for diagnostics

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

    async def ask(
        self, question: str, fan_out: int | None = None, session: str | None = None
    ) -> Answer:
        """Answer from the shard(s) the question routes to, in parallel, merged in rank order.

        `session`: "new" (or an id not in use) starts a conversation, an id in use continues
        it; the answer says the session's id. Refused before anything is sent if it would
        take the last 24 hours' spend over `max_usd_per_day`."""
        question = question.strip()
        if not question:
            raise InvalidArgumentError("question is empty: ask something about the documents")
        if fan_out is not None and fan_out < 1:
            raise InvalidArgumentError("fan_out must be at least 1")
        if session is not None:
            return await self._ask_in_session(question, fan_out, Sessions.check_id(session))
        corpus = self.current  # this question's snapshot, whatever refreshes happen meanwhile
        self._check_documents(corpus)
        chosen = self.route(question, corpus, fan_out or self.settings.fan_out)
        estimate = sum(self.estimate_usd(corpus, shard, question) for shard in chosen)
        with self._within_budget(estimate):
            answer = await self._ask_shards(question, corpus, chosen)
        return replace(answer, estimated_usd=estimate)

    def _check_documents(self, corpus: Corpus) -> None:
        if not corpus.snapshot.documents:
            raise NotInCorpusError(
                f"the corpus folder {self.settings.corpus} holds no documents to ask about"
            )

    async def _ask_shards(self, question: str, corpus: Corpus, chosen: list[Shard]) -> Answer:
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

    async def _ask_in_session(self, question: str, fan_out: int | None, session_id: str) -> Answer:
        """A question in a conversation: the session's corpus and shard (pinned at its first
        question), then the conversation so far, then the question."""
        if fan_out is not None and fan_out > 1:
            raise InvalidArgumentError(
                "a session is answered by one shard, the one it started on: leave fan_out out"
            )
        found: Session[_Pin] | None = None
        if session_id != NEW:
            found = self._sessions.get(session_id)
        if found is None:
            corpus = self.current
            self._check_documents(corpus)
            found = self._sessions.start(
                session_id, _Pin(corpus, self.route(question, corpus, 1)[0])
            )
        async with found.lock:  # one question at a time per conversation
            pin = found.pin
            kept, dropped = trim_turns(
                found.turns, estimate_tokens(question),
                max_turns=self.settings.session_max_turns,
                max_tokens=self.settings.session_max_tokens,
            )  # fmt: skip
            found.turns = list(kept)
            found.dropped += dropped
            estimate = self.estimate_usd(
                pin.corpus, pin.shard, question, sum(t.tokens for t in kept)
            )
            with self._within_budget(estimate):
                part = await self._ask_shard(
                    question, pin.corpus, pin.shard,
                    conversation=[t.exchange for t in kept], marked=pin.marked,
                )  # fmt: skip
            if pin.marked is None:
                pin.marked = part.marked  # follow-ups mark the same anchors: the same prefix
            tokens = part.usage.output_tokens + estimate_tokens(question)
            found.turns.append(Turn(question, part.raw_text, tokens))
            found.last_used = self.clock()
            turns = len(found.turns)
        return replace(
            self._merge(pin.corpus, [part]),
            estimated_usd=estimate,
            session=found.id,
            session_turns=turns,
            session_dropped_turns=dropped,
            session_snapshot_is_live=self._corpus is pin.corpus,
        )

    # --- budget -----------------------------------------------------------------------

    def estimate_usd(
        self, corpus: Corpus, shard: Shard, question: str, conversation_tokens: int = 0
    ) -> float:
        """What asking `question` on `shard` should cost, with a full-length answer: reading
        the cached prefix if its end is believed warm, else writing it. A conversation is
        priced as uncached input, which is never less than what it costs."""
        plan = shard.plan
        cached = max((b.prefix_tokens for b in plan.blocks if b.ttl), default=0)
        decision = self.ttl_decision(shard) if plan.cached else None
        ttl = "1h" if decision and "1h" in (decision.stable_ttl, decision.tail_ttl) else "5m"
        cold, warm, uncached = project_question(
            cached if plan.cached else 0,
            plan.total_tokens - (cached if plan.cached else 0) + conversation_tokens,
            self.model,
            question_tokens=estimate_tokens(question),
            output_tokens=self.settings.max_answer_tokens,
            ttl=ttl,
        )
        if not plan.cached or not plan.anchors:
            return uncached
        ids = corpus.anchor_ids.get(shard.number, {})
        end = ids.get(plan.anchors[-1])
        return warm if end is not None and self._entries.get(end, 0.0) > self.clock() else cold

    @contextmanager
    def _within_budget(self, estimate: float) -> Iterator[None]:
        """Refuse, sending nothing, if the last 24 hours' spend on this corpus, plus what
        questions under way are expected to cost, plus `estimate`, exceeds the daily cap."""
        cap = self.settings.max_usd_per_day
        if cap is not None:
            spent = self.ledger.totals(self.corpus_key, self.clock() - DAY_SECONDS).cost_usd
            if spent + self._pending_usd + estimate > cap:
                under_way = (
                    f" and ${self._pending_usd:.4f} for questions under way"
                    if self._pending_usd
                    else ""
                )
                raise BudgetExceededError(
                    f"not sent: this question is estimated at ${estimate:.4f}, and "
                    f"${spent:.4f} has been spent on this corpus in the last 24 hours"
                    f"{under_way}, which would exceed the cap of ${cap:.2f} a day "
                    "(--max-usd-per-day). Raise the cap, or wait until earlier spend is more "
                    "than 24 hours old.",
                    spent_usd=spent,
                    estimate_usd=estimate,
                    cap_usd=cap,
                )
        self._pending_usd += estimate
        try:
            yield
        finally:
            self._pending_usd = max(0.0, self._pending_usd - estimate)

    # --- one shard --------------------------------------------------------------------

    async def _ask_shard(
        self,
        question: str,
        corpus: Corpus,
        shard: Shard,
        *,
        conversation: Sequence[tuple[str, str]] = (),
        marked: Sequence[int] | None = None,
    ) -> _ShardAnswer:
        """Ask one shard, streaming. `marked`: the anchors to mark (a session's follow-up
        marks those of its first question); by default chosen from what is believed alive.

        Coalescing: a request that would write a cold prefix while another request writing
        that same prefix has not begun its response waits until it has, then reads it."""
        plan = shard.plan
        window = self.model.context_window
        if plan.total_tokens + QUESTION_RESERVE + self.settings.max_answer_tokens > window:
            raise CorpusTooLargeError(
                f"shard {shard.number} is {plan.total_tokens:,} tokens, more than "
                f"{self.model.id}'s {window:,}-token window allows with room for a question "
                "and an answer; lower --budget-tokens"
            )
        ids = corpus.anchor_ids.get(shard.number, {})
        key = (shard.number, tuple(ids[a] for a in plan.anchors))
        begun: anyio.Event | None = None
        while plan.anchors:
            now = self.clock()
            if self._entries.get(ids[plan.anchors[-1]], 0.0) > now:
                break  # warm: nothing to wait for
            writing = self._writing.get(key)
            if writing is None:
                begun = self._writing[key] = anyio.Event()  # this request writes the prefix
                break
            await writing.wait()  # its entries are readable once its response has begun
        self._asked.setdefault(shard.number, []).append(self.clock())
        params, answered = self.request_for(
            corpus, shard, question, max_tokens=self.settings.max_answer_tokens,
            marked=marked, conversation=conversation,
        )  # fmt: skip
        params["diagnostics"] = {"previous_message_id": self._last_message.get(shard.number)}
        ttl: str | None = None

        def release() -> None:
            if begun is not None and not begun.is_set():
                begun.set()
                if self._writing.get(key) is begun:
                    del self._writing[key]

        started = time.perf_counter()
        try:
            async with self.backend.client.messages.stream(**params) as stream:
                async for event in stream:
                    if event.type == "message_start":
                        # The cache usage comes first: the entries this request writes are
                        # readable from now on, and requests waiting for them can go.
                        ttl = answered(Usage.from_api(event.message.usage))
                        release()
                message = await stream.get_final_message()
                headers = stream.response.headers
        except anthropic.APIError as exc:
            latency = (time.perf_counter() - started) * 1000
            self._record_failure("ask", corpus, exc, latency, shard.number)
            raise ApiCallError(describe_api_error(exc)) from exc
        finally:
            release()  # failed before it began: a waiting request writes the prefix itself
        latency = (time.perf_counter() - started) * 1000
        backend = backend_of_response(headers, self.backend.kind)
        usage = Usage.from_api(message.usage)
        miss_reason, missed_tokens = _cache_miss(message)
        self._last_message[shard.number] = message.id
        cost, uncached = cost_usd(usage, self.model), uncached_cost_usd(usage, self.model)
        self.ledger.record(
            RequestRecord(
                at=self.clock(), kind="ask", corpus=self.corpus_key, model=self.model.id,
                backend=backend,
                outcome="ok", usage=usage, cost_usd=cost, uncached_cost_usd=uncached,
                snapshot=corpus.snapshot.version, message_id=message.id, latency_ms=latency,
                shard=shard.number, ttl=ttl, cache_miss_reason=miss_reason,
                cache_missed_tokens=missed_tokens,
            )
        )  # fmt: skip
        mapped = map_answer(list(message.content), plan, corpus.snapshot)
        raw_text = "".join(b.text for b in message.content if b.type == "text")
        return _ShardAnswer(
            shard, mapped.text, mapped.citations, usage, cost, uncached, backend, latency,
            raw_text, marked_anchors(params),
        )  # fmt: skip

    def _remember_entries(
        self,
        ids: dict[int, str],
        alive: set[int],
        marked: list[int],
        usage: Usage,
        now: float,
        ttls: dict[int, Ttl],
    ) -> None:
        """Track which anchors' entries live, from what this request marked and read."""
        if not ttls:
            return
        if alive and usage.cache_read_tokens == 0:
            for anchor in alive:  # we thought them alive; the API did not: forget them
                self._entries.pop(ids[anchor], None)
            alive = set()
        for anchor in marked:
            self._entries[ids[anchor]] = now + TTL_SECONDS[ttls[anchor]]
        if alive and usage.cache_read_tokens:
            read = max(alive)  # the entry read was refreshed, with its own TTL
            self._entries[ids[read]] = now + TTL_SECONDS[ttls[read]]
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
                at=self.clock(), kind=kind, corpus=self.corpus_key, model=self.model.id,
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
        self,
        corpus: Corpus,
        shard: Shard,
        question: str,
        *,
        max_tokens: int,
        marked: Sequence[int] | None = None,
        conversation: Sequence[tuple[str, str]] = (),
    ) -> tuple[dict[str, Any], Callable[[Usage], str | None]]:
        """The params an ask on `shard` would send now, with `max_tokens`, and the function
        to call with the usage the API returned, so the engine knows which entries live;
        it returns the TTL the request used for the end of the corpus. `marked`: the
        anchors to mark (a session's follow-ups mark those of its first question);
        `conversation`: a session's exchanges so far."""
        plan = shard.plan
        ids = corpus.anchor_ids.get(shard.number, {})
        now = self.clock()
        alive = {a for a in plan.anchors if self._entries.get(ids[a], 0.0) > now}
        if marked is None:
            marked = select_breakpoints(
                plan.anchors, alive, slots=MAX_CORPUS_BREAKPOINTS, turn=self._turn
            )
        marked = list(marked)
        self._turn += 1
        decision = self.ttl_decision(shard)
        ttls: dict[int, Ttl] = {
            a: decision.stable_ttl if a < plan.tail_start else decision.tail_ttl
            for a in plan.anchors
        }
        params = build_request(
            plan, corpus.snapshot, question, model=self.model.id, max_tokens=max_tokens,
            marked=marked, ttls=ttls, conversation=conversation,
        )  # fmt: skip

        def answered(usage: Usage) -> str | None:
            self._remember_entries(ids, alive, marked, usage, now, ttls)
            return ttls[plan.anchors[-1]] if plan.anchors else None

        return params, answered

    # --- the TTL and keep-warm policy (policy.py) ---------------------------------------

    def _asked_before(self) -> dict[int, list[float]]:
        """Question times per shard from the ledger, so that a restart does not forget how
        questions arrive (the policy decides from the gaps between them)."""
        asked: dict[int, list[float]] = {}
        for row in reversed(self.ledger.requests(self.corpus_key, limit=200)):
            if row["kind"] == "ask" and row["outcome"] == "ok" and row["shard"] is not None:
                asked.setdefault(int(row["shard"]), []).append(float(row["at"]))
        return asked

    def gaps(self, shard: int) -> list[float]:
        times = self._asked.get(shard, [])
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def ttl_decision(self, shard: Shard) -> Decision:
        plan = shard.plan
        stable = 0
        if plan.cached:
            stable = max((p for p, a in zip(_ends(plan), plan.anchors, strict=True)
                          if a < plan.tail_start), default=0)  # fmt: skip
        forced: Ttl | None = None if self.settings.ttl == "auto" else self.settings.ttl
        asked = len(self._asked.get(shard.number, ()))
        edits = sum(self._history[p].edits for p in plan.order if p in self._history)
        return decide(
            self.gaps(shard.number),
            edits_per_question=edits / asked if asked else 0.0,
            stable_tokens=stable,
            tail_tokens=plan.total_tokens - stable,
            prices=Prices(
                self.model.cache_read_multiplier,
                self.model.cache_write_5m_multiplier,
                self.model.cache_write_1h_multiplier,
            ),
            forced=forced,
        )

    def _ping_due(self, shard: Shard) -> float | None:
        times = self._asked.get(shard.number)
        if not times or not shard.plan.cached:
            return None
        decision = self.ttl_decision(shard)
        after, sent = self._pings.get(shard.number, (0.0, 0))
        count = sent if after == times[-1] else 0
        if decision.ping_every is None or count >= decision.max_pings:
            return None
        return times[-1] + (count + 1) * decision.ping_every

    def next_ping_at(self) -> float | None:
        """When the next keep-warm request is due, if the policy wants any."""
        if self._corpus is None:
            return None
        due = [t for s in self._corpus.shards if (t := self._ping_due(s)) is not None]
        return min(due) if due else None

    def shards_due(self, now: float) -> list[Shard]:
        if self._corpus is None:
            return []
        return [s for s in self._corpus.shards if (t := self._ping_due(s)) is not None and t <= now]

    def pinged(self, shard: int) -> None:
        """A keep-warm request went out for `shard` since its last question."""
        last = self._asked.get(shard, [0.0])[-1]
        after, sent = self._pings.get(shard, (0.0, 0))
        self._pings[shard] = (last, sent + 1 if after == last else 1)


def _cache_miss(message: Any) -> tuple[str | None, int | None]:
    """The API's cache miss reason and the tokens it says were missed, when it diagnosed one."""
    diagnostics = getattr(message, "diagnostics", None)
    reason = getattr(diagnostics, "cache_miss_reason", None)
    if reason is None:
        return None, None
    return str(reason.type), getattr(reason, "cache_missed_input_tokens", None)


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


def _ends(plan: Plan) -> list[int]:
    return [block.prefix_tokens for block in plan.blocks]


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
