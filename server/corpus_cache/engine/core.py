"""The engine: the live corpus (snapshot, token counts, plan, search index) and the work
the tools do with it: ask Claude, search, read, report."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import anyio
from anyio.abc import TaskGroup

from corpus_cache.accounting.ledger import Ledger, Totals
from corpus_cache.accounting.shared import Shared, SharedSpend
from corpus_cache.api.backend import (
    ANTHROPIC,
    Backend,
)
from corpus_cache.api.caller import ApiCaller, Sent
from corpus_cache.api.prepared import PreparedRequest, RequestKind
from corpus_cache.api.ratelimits import (
    RateLimits,
    count_limits_at_tier,
    least_input_tokens_per_minute,
    limits_at_tier,
)
from corpus_cache.api.request import (
    INSTRUCTIONS,
    checked_question,
    map_answer,
)
from corpus_cache.api.spending import DailyCap
from corpus_cache.api.tokens import Counts, TokenCounter
from corpus_cache.cache import browse, live_corpus
from corpus_cache.cache import markers as marker_blocks
from corpus_cache.cache.entries import CacheEntries
from corpus_cache.cache.history import History
from corpus_cache.cache.keeping import ShardState
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.cache.policy import Decision, Prices, decide, upgrades_at_question
from corpus_cache.cache.prepare import BY_POLICY, Marking, prepare_request
from corpus_cache.config import Settings
from corpus_cache.corpus.changes import document_changes
from corpus_cache.corpus.documents import Document, Snapshot, find
from corpus_cache.corpus.scan import CorpusRoot, ScanOptions, ScanResult, scan
from corpus_cache.corpus.search import Hit, SearchIndex
from corpus_cache.engine.answers import Answer, Prewarmed, ShardAnswer, merge
from corpus_cache.engine.build import Builder
from corpus_cache.engine.from_usage import FromUsage
from corpus_cache.engine.indexing import Indexing
from corpus_cache.engine.keeper import Keeper
from corpus_cache.engine.remembered import RememberedEntries
from corpus_cache.engine.remembered_limits import RememberedLimits, account_key
from corpus_cache.engine.sessions import (
    LOCAL,
    NEW,
    Session,
    Sessions,
    Turn,
    estimate_tokens,
    trim_turns,
)
from corpus_cache.errors import (
    CorpusCacheError,
    CorpusTooLargeError,
    InvalidArgumentError,
    LedgerUnavailableError,
    NotInCorpusError,
    first_leaf,
)
from corpus_cache.models.catalog import Catalog, ModelSpec
from corpus_cache.models.limits import load_limits
from corpus_cache.models.pricing import Ttl, Usage
from corpus_cache.plan.budget import default_budget, window_budget
from corpus_cache.plan.layout import (
    MAX_BREAKPOINTS,
    SESSION_CORPUS_BREAKPOINTS,
    Layout,
    Shard,
    plan_corpus,
)
from corpus_cache.plan.route import (
    DOCUMENT_WEIGHT,
    HITS,
    rank_shards,
    shard_evidence,
    unsure_shards,
)
from corpus_cache.plan.stability import DocInfo
from corpus_cache.plan.staging import slice_capacity

log = logging.getLogger(__name__)

QUESTION_RESERVE = 2_000  # tokens kept free in the window for the question
# Of a client's deadline, what is left for the answer to arrive once a question is sent.
ANSWER_ROOM_SECONDS = 10.0
# What an answer takes once its prefix is cached: a read of it and the output streamed.
ANSWER_SECONDS = 20.0
# After the last breakpoint, so it is never cached and its wording does not matter.
WARM_QUESTION = "(Warming the cache: no answer is wanted.)"
# How long another instance's claim to write a cold prefix holds if it is never released
# (its process hung; one that is gone holds nothing), and how often a waiter looks.
CLAIM_SECONDS = 120.0
CLAIM_POLL_SECONDS = 0.05


SwapListener = Callable[["Corpus | None", "Corpus"], Awaitable[None]]


@dataclass
class _Pin:
    """What a session is bound to: the corpus and shard of its first question, and the
    anchors that question's request marked (set once it is answered)."""

    corpus: Corpus
    shard: Shard
    marked: tuple[int, ...] | None = None


class Engine:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        backend: Backend,
        ledger: Ledger,
        clock: Callable[[], float] = time.time,
        *,
        root: CorpusRoot | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """`root`: the corpus folder, if already opened (else it is at the first scan);
        `sleep`: waits for the rate limits, on `clock`."""
        self.settings = settings
        self.catalog = catalog
        self.model: ModelSpec = catalog.get(settings.model)
        self.backend = backend
        self.ledger = ledger
        self.clock = clock
        # What the instances sharing the state folder tell each other (accounting/shared.py).
        self.shared = Shared(ledger)
        # Every request to the API goes through this one caller (api/caller.py). The daily
        # cap counts what may have been billed too: an estimate, but money perhaps spent;
        # and the requests other instances have under way.
        limits, count_limits = _known_limits(settings, self.model, clock())
        # Without a tier, what the API said of this account's limits in an earlier run
        # (engine/remembered_limits.py); learned before the first plan if nothing is known.
        self._limits_memory = RememberedLimits(
            settings.state_dir,
            account_key(_backend_key(backend), backend.client.api_key, self.model.id),
        )
        earlier = None if limits.buckets else self._limits_memory.load(clock())
        if earlier is not None:
            limits = earlier.limits
        self._limits_asked = earlier is not None  # asked, or remembered: not asked again
        spend = SharedSpend(self.shared, self.corpus_key, lambda: self.answering)
        self.caller = ApiCaller(
            backend, self.model, ledger, self.corpus_key,
            DailyCap(settings, self._spent_since, clock, spend), clock,
            limits=limits, count_limits=count_limits, sleep=sleep,
            shared=(self.shared, _backend_key(backend)),
        )  # fmt: skip
        self.caller.on_limits = lambda seen: self._limits_memory.save(seen, self.clock())
        self.counter = TokenCounter(self.caller, self.model.id, ledger)
        self._from_usage = FromUsage(self.counter)  # exact figures from responses' usage
        self._corpus: Corpus | None = None
        # The corpus folder, opened at the first scan and read through that descriptor ever
        # after: a folder or symlink put at its path later is never read (beneath.py).
        self._root: CorpusRoot | None = root
        self._version = 0
        self._scanned: ScanResult | None = None  # the last scan, the base of the next
        self._instructions_tokens: int | None = None
        self._estimate_error = 0.0  # of the latest token figures (api/tokens.py, Counts)
        self.indexing = Indexing()  # how far the latest refresh is; `done` after the first
        # The input-token limit the shards were first sized by (a list: None is a figure).
        self._sized_by: list[int | None] = []
        self._refreshing = anyio.Lock()
        self.sleep = sleep
        self.entries = CacheEntries()  # the cache entries we believe alive
        # Kept across a restart, so that a staged build goes on from what it wrote, and
        # shared with the other instances on the state folder.
        self._backend_key = _backend_key(backend)
        self.remembered = RememberedEntries(self.shared, self.corpus_key, self._backend_key)
        self.entries.restore(self.remembered.load(clock()))
        self.entries.on_change = self.remembered.save
        self.entries.on_answered = self._learn_from_usage
        self.builder = Builder(self)  # staged cache builds, within the rate limits (build.py)
        self._turn = 0
        # Edits and question times, for the planner and the TTL policy.
        try:
            recent = ledger.requests(self.corpus_key, limit=200)
        except LedgerUnavailableError as exc:
            log.warning("%s; starting without the history of earlier questions", exc)
            recent = []
        self.history = History.from_requests(recent)
        # Other instances' questions from here on (those before are in the ledger's rows).
        self._questions_read = self.shared.last_question(self.corpus_key, clock())
        self.last_prewarm: Prewarmed | None = None  # after a change, with --prewarm
        self._listeners: list[SwapListener] = []
        self._sessions: Sessions[_Pin] = Sessions(
            idle_seconds=settings.session_idle_minutes * 60,
            max_sessions=settings.max_sessions,
            clock=clock,
        )
        # Cache entries being written, by anchor identity: set once the writing response
        # has begun, when its entries become readable.
        self._writing: dict[str, anyio.Event] = {}
        self._claimed: set[str] = set()  # cold entries this instance claimed to write
        self._last_message: dict[int, str] = {}  # shard -> last answer's id, for diagnostics
        # Where questions' requests run while `reading_answers` does: read to their end
        # whether or not anyone still waits for them (a deadline, a sibling's failure).
        self._readers: TaskGroup | None = None
        self.read_for_no_one = 0  # responses being read that no question waits for any more
        # Of the servers sharing the state folder, the one that sends background requests
        # (engine/keeper.py); None: this engine is alone, and keeps its own cache.
        self.keeper: Keeper | None = None

    def _spent_since(self, since: float) -> float:
        totals = self.totals(since, self.answering)
        return totals.cost_usd + totals.maybe_usd

    @asynccontextmanager
    async def reading_answers(self) -> AsyncIterator[None]:
        """While it runs, the engine reads every question's response to its end, even when
        the question is given up (the ask's deadline, a shard of a fan-out failing): the API
        runs a request to completion whether or not anyone listens, and bills it, so its
        usage is recorded and the cache entries it writes are known alive for the next
        question. On the way out, responses still under way are cancelled at once, and
        recorded with what is known of them."""
        failed: Exception | None = None
        async with anyio.create_task_group() as group:
            self._readers = group
            try:
                yield
            except Exception as exc:  # raised below, not wrapped in the task group's group
                failed = exc
            finally:
                self._readers = None
                self.caller.stopping = "the server stopped before the response ended"
                group.cancel_scope.cancel()
        if failed is not None:
            raise failed

    def on_swap(self, listener: SwapListener) -> None:
        """Call `listener(old, new)` after every swap of the live corpus (old is None at first)."""
        self._listeners.append(listener)

    @property
    def answering(self) -> str:
        """The backend answering now, as its responses say (an emulator behind a base URL is
        the emulator): spend is counted and capped per backend, never across them."""
        return self.caller.label

    @property
    def corpus_key(self) -> str:
        return str(self.settings.corpus)

    @property
    def root_identity(self) -> tuple[int, int] | None:
        """Device and inode of the corpus folder being served, once it has been opened."""
        return self._root.identity if self._root is not None else None

    def folder_problem(self) -> str | None:
        """Why the corpus path no longer leads to the folder being served (gone, or another
        folder or a symlink in its place), or None: the last snapshot is served meanwhile."""
        problem = self._root.problem() if self._root is not None else None
        return str(problem) if problem is not None else None

    def close(self) -> None:
        """Let go of the corpus folder's descriptor."""
        if self._root is not None:
            self._root.close()

    @property
    def indexed(self) -> bool:
        """Whether there is a live corpus yet (`current` raises until refresh() has run)."""
        return self._corpus is not None

    @property
    def current(self) -> Corpus:
        if self._corpus is None:
            raise RuntimeError("the corpus has not been indexed yet: call refresh() first")
        return self._corpus

    async def refresh(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        changed: Collection[str] | None = None,
    ) -> Corpus:
        """Rescan the folder and swap in a new corpus; unchanged files are not re-read, and
        when nothing changed the live corpus stays as it is (no new snapshot, no swap).
        `changed`: the only files that changed since the last refresh (the watcher says
        which), so that only they are looked at again; None rescans the whole folder.
        Refreshes run one at a time; questions keep the corpus they started with."""
        async with self._refreshing:
            old = self._corpus
            new = await self._rebuild(progress, changed)
            if new is old:
                return new
            self._corpus = new  # one assignment: a question sees the old corpus or the new
            self.indexing.done.set()
        for listener in self._listeners:
            await listener(old, new)
        return new

    async def _rebuild(
        self, progress: Callable[[int, int], None] | None, changed: Collection[str] | None
    ) -> Corpus:
        previous: ScanResult | dict[str, Document]
        if changed is not None and self._scanned is not None:
            previous = self._scanned  # what the last scan found, and those files only again
        else:
            changed = None
            previous = {d.path: d for d in self._corpus.snapshot.documents} if self._corpus else {}
        # On a worker thread: tools keep answering from the live corpus while a big folder
        # is walked.
        options = ScanOptions(
            max_file_bytes=self.settings.max_file_bytes,
            allow_secret_content=self.settings.allow_secret_content,
            allow_hard_links=self.settings.allow_hard_links,
        )
        if self._root is None:
            self._root = CorpusRoot(self.settings.corpus)
        result = await anyio.to_thread.run_sync(
            scan, self._root, options, previous, self.indexing.reading, changed
        )
        self._scanned = result
        if self._corpus is not None and _same_folder(self._corpus.snapshot, result):
            # Nothing a question would see changed: the same snapshot stays live, so a
            # rescan for nothing (the watcher's catch-up at start, a touch) is no new version.
            return self._corpus
        touched = None  # the paths whose documents differ from the live corpus's, if known
        if changed is None or self._corpus is None:
            counts = await self.counter.count(result.documents, self._counting(progress))
        else:
            counts, touched = await self._count_changes(result.documents, progress)
        counts = self.counter.refined(counts, result.documents)  # what usage made exact
        tokens = counts.tokens
        if self._instructions_tokens is None:
            self._instructions_tokens = await self.counter.count_system(INSTRUCTIONS)
        await self._learn_limits(sum(tokens.values()))
        self.indexing.planning()
        self._estimate_error = counts.error
        now = self.clock()
        docs = self.history.observe(result.documents, tokens, now)
        layout = self._plan(docs, self._corpus, now, result.documents, touched)
        self._version += 1
        snapshot = Snapshot(
            self.settings.corpus, self._version, now, result.documents, result.skipped
        )
        corpus = live_corpus.with_entries(
            Corpus(
                snapshot, tokens, layout, SearchIndex(snapshot),
                estimated=counts.estimated, estimate_error=counts.error,
            ),
            self._corpus, self.model.id,
        )  # fmt: skip
        log.info(
            "corpus v%d: %d documents, %d tokens, %d left out; %d shard(s): %s",
            snapshot.version, len(snapshot.documents), corpus.corpus_tokens,
            len(snapshot.skipped), len(layout.shards), layout.shards[0].plan.note,
        )  # fmt: skip
        return corpus

    def _learn_from_usage(self, request: PreparedRequest, usage: Usage) -> None:
        """The live corpus's figures, refined with what a response's usage made exact (no
        replan: the next refresh plans with them). Counts never mix backends: only usage
        from the backend that counts teaches anything."""
        if self._corpus is None or self.answering != self.counter.backend:
            return
        refined = self._from_usage.answered(self._corpus, request, usage)
        if refined is not None:
            self._corpus = refined
            self._estimate_error = refined.estimate_error

    async def _count_changes(
        self, documents: Sequence[Document], progress: Callable[[int, int], None] | None
    ) -> tuple[Counts, set[str]]:
        """After a rescan of the files a save named: the token figures of `documents`, those
        of the live corpus's documents taken as they are (a figure depends on the text
        alone; an estimate stays one until its document changes, or a whole rescan), the
        new texts counted; and the paths added, removed or edited since the live corpus."""
        live = self.current
        added, removed, edited = document_changes(live.snapshot.documents, documents)
        touched = {*added, *removed, *edited}
        fresh = [doc for path in sorted(added + edited) if (doc := find(documents, path))]
        counted = await self.counter.count(fresh, self._counting(progress)) if fresh else Counts({})
        tokens = {path: n for path, n in live.tokens.items() if path not in touched}
        tokens.update(counted.tokens)
        estimated = {p: n for p, n in live.estimated.items() if p not in touched}
        # The bound of the estimates kept is not known one by one: the live corpus's holds it.
        error = max(live.estimate_error if estimated else 0.0, counted.error)
        estimated.update(counted.estimated)
        return Counts(tokens, estimated, error), touched

    def _counting(self, progress: Callable[[int, int], None] | None) -> Callable[[int, int], None]:
        def counted(done: int, total: int) -> None:
            self.indexing.counting(done, total)
            if progress is not None:
                progress(done, total)

        return counted

    def _plan(
        self,
        docs: list[DocInfo],
        previous: Corpus | None,
        now: float,
        documents: Sequence[Document],
        touched: set[str] | None = None,
    ) -> Layout:
        """`documents`: the folder's current documents, against which the old copies
        `previous` keeps are checked for text the folder no longer has. `touched`, if known:
        the paths whose documents differ from `previous`'s (the others are not looked at
        again; the layout is the same)."""
        assert self._instructions_tokens is not None
        dropped: frozenset[tuple[str, str]] = frozenset()
        if previous is not None and not self.settings.keep_old_copies:
            current = (
                {d.path: d for d in documents}
                if touched is None
                else {p: d for p in touched if (d := find(documents, p)) is not None}
            )
            dropped = live_corpus.removed_text(previous, current, paths=touched)
        return plan_corpus(
            docs,
            min_cacheable_tokens=self.model.min_cacheable_tokens,
            instructions_tokens=self._instructions_tokens,
            budget_tokens=self._planning_budget(sum(d.tokens for d in docs if not d.superseded)),
            now=now,
            previous=previous.layout if previous else None,
            live=self._live_anchors(previous, now) if previous else None,
            dropped=dropped,
            estimate_error=self._estimate_error,
            changed=touched,
        )

    def _live_anchors(self, corpus: Corpus, now: float) -> dict[int, tuple[int, ...]]:
        """Per shard, the anchors whose entries are alive as far as we know, those most
        worth keeping first: the furthest (what the next question reads through), then
        1-hour entries (the costliest to write again), then the others, furthest first."""
        live: dict[int, tuple[int, ...]] = {}
        for shard in corpus.shards:
            ids = corpus.anchor_ids.get(shard.number, {})
            ttls = self.entries.live(ids, shard.plan.anchors, now)
            if ttls:
                furthest = max(ttls)
                live[shard.number] = tuple(
                    sorted(ttls, key=lambda a: (a != furthest, ttls[a] != "1h", -a))
                )
        return live

    async def _compacted(self) -> Corpus:
        """The live corpus, without old copies of edited documents outside the live cache:
        once the prefix that kept them has lapsed, the next request writes it anyway, and
        it may as well write the current documents only."""
        corpus = self.current
        now = self.clock()
        live = self._live_anchors(corpus, now)
        if not any(
            s.plan.superseded and max(s.plan.superseded) > max(live.get(s.number, (-1,)))
            for s in corpus.shards
        ):
            return corpus
        async with self._refreshing:
            if self._corpus is not corpus:
                return self.current
            docs = self.history.doc_infos(corpus.snapshot.documents, corpus.tokens)
            compact = live_corpus.with_entries(
                replace(corpus, layout=self._plan(docs, corpus, now, corpus.snapshot.documents)),
                corpus,
                self.model.id,
            )
            self._corpus = compact
        log.info("old copies of edited documents dropped from the layout: their cache lapsed")
        return compact

    @property
    def budget_tokens(self) -> int:
        """The shards' size (plan/budget.py): set, or by the window, the price of a warm
        question (once the corpus is larger than the window) and the input-token limit
        known when the corpus was first planned. That limit is kept: what the API's headers
        say later must not reshard the corpus. Before the first plan, what it would be with
        the limits known now."""
        corpus = self._corpus
        return self._budget_for(corpus.corpus_tokens if corpus is not None else None)

    def _budget_for(self, corpus_tokens: int | None) -> int:
        if self.settings.budget_tokens is not None:
            return self.settings.budget_tokens
        limit = self._sized_by[0] if self._sized_by else self.caller.limits.input_tokens_per_minute
        return default_budget(
            self.model, self.settings.reserve_tokens,
            warm_question_usd=self.settings.warm_question_usd,
            input_tokens_per_minute=limit,
            build_minutes=self.settings.build_minutes,
            corpus_tokens=corpus_tokens,
        )  # fmt: skip

    def _planning_budget(self, corpus_tokens: int) -> int:
        """The shards' size for a plan of `corpus_tokens`. The input-token limit it rests on
        is the one known at the first plan; the rest follows the corpus as it is now, so
        that every instance on the folder, and a restart, cuts the same shards."""
        if not self._sized_by:
            self._sized_by.append(self.caller.limits.input_tokens_per_minute)
        return self._budget_for(corpus_tokens)

    async def _learn_limits(self, corpus_tokens: int) -> None:
        """Before the folder is planned with no limits known (no --tier, nothing remembered,
        no response yet): send the one small request whose response states them, so that
        shards and staged builds fit the account from the first question on, rather than
        the first write meeting a 429. Not while one request could write the whole corpus
        at the lowest tier of the table (nothing would be planned differently; a folder
        that grows past it is asked about then), nor to an emulator this process started
        (its limits are the settings'). A failure is logged: planning goes on without
        limits, and the first response's headers teach them."""
        if self._limits_asked or self.caller.limits.buckets:
            return
        if self.backend.kind != ANTHROPIC:
            return
        least = least_input_tokens_per_minute(load_limits(self.settings.limits_file), self.model.id)
        if least is not None and corpus_tokens <= slice_capacity(least):
            return
        self._limits_asked = True
        try:
            sent = await self.caller.learn_limits()
        except CorpusCacheError as exc:
            log.warning("could not learn the account's rate limits before planning: %s", exc)
            return
        known = self.caller.limits
        if not known.buckets:
            self._limits_memory.save(known, self.clock())  # none stated: not asked again
        stated = ", ".join(
            f"{b.per_minute:,} {k.replace('_', ' ')}" for k, b in known.buckets.items()
        )
        log.info(
            "the account's rate limits, learned with one request ($%.6f): %s",
            sent.cost_usd, f"{stated} a minute" if stated else "none stated",
        )  # fmt: skip

    # --- ask --------------------------------------------------------------------------

    def route(self, question: str, corpus: Corpus, fan_out: int | None) -> list[Shard]:
        """The shards most likely to hold the answer, best first (all of one, if one):
        `fan_out` of them, or, left to the routing (None), the best and, when the routing
        is unsure, the runner-up (plan/route.py `unsure_shards`) if it needs no staged
        build first: an extra shard is not worth a wait."""
        if len(corpus.shards) == 1:
            return list(corpus.shards)
        hits = corpus.index.search(question, HITS, document_weight=DOCUMENT_WEIGHT)
        found = [(h.passage.path, h.score) for h in hits]
        shard_of = corpus.layout.shard_of()
        ranked = rank_shards(found, shard_of, [s.number for s in corpus.shards])
        if fan_out is not None:
            return [corpus.shard(n) for n in ranked[: max(1, fan_out)]]
        tokens = {s.number: s.corpus_tokens for s in corpus.shards}
        window = window_budget(self.model, self.settings.reserve_tokens)
        chosen = unsure_shards(ranked, shard_evidence(found, shard_of), tokens, window)
        best, *others = [corpus.shard(n) for n in chosen]
        return [best, *(s for s in others if not self.builder.needed(corpus, s))]

    async def ask(
        self,
        question: str,
        fan_out: int | None = None,
        session: str | None = None,
        *,
        owner: str = LOCAL,
        patience: float | None = None,
    ) -> Answer:
        """Answer from the shard(s) the question routes to, in parallel, merged in rank order.

        `session`: "new" (or an id not in use) starts a conversation, an id in use continues
        it; the answer says the session's id. `owner`: the MCP connection asking
        (sessions.py); a session is continued only by the owner that started it. Refused
        before anything is sent if it would take the last 24 hours' spend over
        `max_usd_per_day`. `patience`: the seconds the client waits; a question the rate
        limits would hold longer is refused at once, saying when to ask again."""
        question = checked_question(question)
        if fan_out is not None and fan_out < 1:
            raise InvalidArgumentError("fan_out must be at least 1")
        # Before the layout's old copies are dropped and a staged build is waited for:
        # another instance may have kept or written what this one believes lapsed.
        self.catch_up()
        if session is not None:
            return await self._ask_in_session(
                question, fan_out, Sessions.check_id(session), owner, patience
            )
        # This question's snapshot, whatever refreshes happen meanwhile.
        corpus = await self._compacted()
        self._check_documents(corpus)
        # Left out, and no --fan-out above 1: the routing decides between one and two.
        chosen = self.route(question, corpus, fan_out or self._fan_out)
        began = self.clock()
        await self.builder.ready(corpus, chosen, within=self.build_patience)
        if patience is not None:
            patience -= self.clock() - began  # what the build took of the client's wait
        return await self._ask_shards(question, corpus, chosen, patience)

    @property
    def _fan_out(self) -> int | None:
        return self.settings.fan_out if self.settings.fan_out > 1 else None

    @property
    def build_patience(self) -> float:
        """How long a question may wait for a staged build (build.py) to finish: the
        client's deadline, less the time the answer itself takes once the cache is built."""
        deadline = self.settings.ask_deadline
        return max(0.0, deadline - min(ANSWER_SECONDS, deadline / 2))

    def _check_documents(self, corpus: Corpus) -> None:
        if not corpus.snapshot.documents:
            raise NotInCorpusError(
                f"the corpus folder {self.settings.corpus} holds no documents to ask about"
            )

    async def _ask_shards(
        self, question: str, corpus: Corpus, chosen: list[Shard], patience: float | None
    ) -> Answer:
        """Ask `chosen` at once: all are prepared together, refused or sent as one against
        the daily cap and the client's patience, and merged in rank order."""
        requests = await self._prepare_questions(question, corpus, chosen)
        try:
            self._within_patience([request for _, _, request in requests], patience)
            estimate = sum(request.estimate_usd for _, _, request in requests)
            with self.caller.cap.within(estimate):
                if len(requests) == 1:
                    parts = [await self._send_question(*requests[0])]
                else:
                    parts = await self._send_questions(requests)
        finally:  # refused unsent, or failed: another instance may write them now
            self.release_claims({i for _, _, r in requests for i in r.writes})
        return replace(merge(corpus, parts, self.model.id), estimated_usd=estimate)

    async def _send_questions(
        self, requests: list[tuple[Corpus, Shard, PreparedRequest]]
    ) -> list[ShardAnswer]:
        answers: dict[int, ShardAnswer] = {}
        paced = self.caller.scheduler.new_group()  # paced as one by the rate limits

        async def one(corpus: Corpus, shard: Shard, request: PreparedRequest) -> None:
            answers[shard.number] = await self._send_question(corpus, shard, request, paced)

        try:
            async with anyio.create_task_group() as group:
                for request in requests:
                    group.start_soon(one, *request)
        except BaseExceptionGroup as failures:
            # One shard failing fails the question; say why as the single-shard path would.
            first = first_leaf(failures)
            if isinstance(first, CorpusCacheError):
                raise first from failures
            raise
        return [answers[shard.number] for _, shard, _ in requests]

    def _within_patience(self, requests: list[PreparedRequest], patience: float | None) -> None:
        """Refuse, unsent, a question the rate limits would hold past the client's patience
        (less the time its answer takes to arrive)."""
        if patience is None:
            return
        wait = self.caller.question_wait(requests)
        if wait is not None and wait > max(patience - ANSWER_ROOM_SECONDS, patience / 2):
            raise self.caller.too_long_to_wait(wait, patience)

    async def _ask_in_session(
        self,
        question: str,
        fan_out: int | None,
        session_id: str,
        owner: str,
        patience: float | None = None,
    ) -> Answer:
        """A question in a conversation: the session's corpus and shard (pinned at its first
        question), then the conversation so far, then the question."""
        if fan_out is not None and fan_out > 1:
            raise InvalidArgumentError(
                "a session is answered by one shard, the one it started on: leave fan_out out"
            )
        found: Session[_Pin] | None = None
        if session_id != NEW:
            found = self._sessions.get(session_id, owner=owner)
        if found is None:
            corpus = self.current
            self._check_documents(corpus)
            found = self._sessions.start(
                session_id, _Pin(corpus, self.route(question, corpus, 1)[0]), owner=owner
            )
        async with found.lock:  # one question at a time per conversation
            if self._sends_removed_text(found.pin):
                # The folder lost text the session's corpus holds: go on from the live one.
                live = self.current
                self._check_documents(live)
                found.pin = _Pin(live, self.route(question, live, 1)[0])
                log.info("session %s moved to the live corpus: text it held was removed", found.id)
            pin = found.pin
            await self.builder.ready(pin.corpus, [pin.shard], within=self.build_patience)
            kept, dropped = trim_turns(
                found.turns, estimate_tokens(question),
                max_turns=self.settings.session_max_turns,
                max_tokens=self.settings.session_max_tokens,
            )  # fmt: skip
            found.turns = list(kept)
            found.dropped += dropped
            ((corpus, shard, request),) = await self._prepare_questions(
                question, pin.corpus, [pin.shard],
                conversation=[t.exchange for t in kept], marked=pin.marked, pinned=True,
            )  # fmt: skip
            try:
                self._within_patience([request], patience)
                estimate = request.estimate_usd
                with self.caller.cap.within(estimate):
                    part = await self._send_question(corpus, shard, request)
            finally:
                self.release_claims(request.writes)
            if pin.marked is None:
                pin.marked = part.marked  # follow-ups mark the same anchors: the same prefix
            tokens = part.usage.output_tokens + estimate_tokens(question)
            found.turns.append(Turn(question, part.raw_text, tokens))
            found.last_used = self.clock()
            turns = len(found.turns)
        return replace(
            merge(pin.corpus, [part], self.model.id),
            estimated_usd=part.bound_usd,
            session=found.id,
            session_turns=turns,
            session_dropped_turns=dropped,
            session_snapshot_is_live=self.current.snapshot is pin.corpus.snapshot,
        )

    def _sends_removed_text(self, pin: _Pin) -> bool:
        """Whether a follow-up on `pin` would send text no longer in the folder (an edit
        removed it, or its file is gone), unless old copies are kept on purpose."""
        live = self.current
        if self.settings.keep_old_copies or pin.corpus.snapshot is live.snapshot:
            return False
        current = {d.path: d for d in live.snapshot.documents}
        return bool(live_corpus.removed_text(pin.corpus, current, [pin.shard]))

    # --- one shard --------------------------------------------------------------------

    async def _prepare_questions(
        self,
        question: str,
        corpus: Corpus,
        chosen: Sequence[Shard],
        *,
        conversation: Sequence[tuple[str, str]] = (),
        marked: Sequence[int] | None = None,
        pinned: bool = False,
    ) -> list[tuple[Corpus, Shard, PreparedRequest]]:
        """The request a question sends to each of `chosen`, with the corpus it was built
        on (a question may add marker blocks, cache/markers.py). `marked`: the anchors to
        mark (a session's follow-up marks those of its first question); by default chosen
        from what is believed alive. `pinned`: send `corpus` as it is (a session's), without
        adding or dropping marker blocks, and mark at most three anchors: the session's
        follow-ups mark the same ones and the conversation takes the fourth.

        Coalescing: while a request writing a cold prefix one of these would write has not
        begun its response, wait until it has, then read it. The other request may be on
        another snapshot that shares this one's first documents. The requests are prepared
        once nothing is pending, with no wait in between, so none of them can be overtaken."""
        for shard in chosen:
            self._check_fits(shard)
        self.catch_up()
        # The markers are chosen as the question arrives, by the policy without its gap;
        # the TTLs it asks for, once it is counted (history.asked) below.
        corpora = {
            s.number: corpus if pinned else self._with_question_markers(corpus, s)
            for s in chosen
        }  # fmt: skip
        while True:
            pending = next(
                (w for s in chosen if (w := self._pending_write(corpora[s.number], s)) is not None),
                None,
            )
            if pending is not None:
                await pending.wait()  # its entries are readable once its response has begun
                continue
            # Another instance on the state folder may be writing the same cold prefix: the
            # claim is checked and taken in one transaction, so one of two instances writes.
            cold = self._cold_ids(corpora, chosen)
            if await self.claim_to_write(cold):
                break
        requests = []
        for shard in chosen:
            shard_corpus = corpora[shard.number]
            self.history.asked(shard.number, self.clock())
            self.shared.asked(self.corpus_key, shard.number, self.clock())
            request = prepare_request(
                "ask", shard_corpus, shard, question, model=self.model,
                max_tokens=self.settings.max_answer_tokens,
                live=self.live_ttls(shard_corpus, shard), decision=self.ttl_decision(shard),
                turn=self._next_turn(), now=self.clock(),
                marking=Marking(
                    marked=marked,
                    slots=SESSION_CORPUS_BREAKPOINTS if pinned else MAX_BREAKPOINTS,
                ),
                conversation=conversation,
                previous_message_id=self._last_message.get(shard.number),
            )  # fmt: skip
            if shard_corpus is not corpus:
                # Markers added after a block leave its prefix as it was: what is alive of
                # `corpus` is read through the lookback, which the rate limits do not count.
                read = self._read_through(corpus, shard)
                if read > request.read_tokens:
                    request = replace(request, read_tokens=read)
            requests.append((shard_corpus, shard, request))
        # Claimed and not written by these requests: no one need wait for them.
        self.release_claims(cold - {i for _, _, r in requests for i in r.writes})
        return requests

    def catch_up(self) -> None:
        """What the other instances on the state folder learnt since the last look: cache
        entries they made alive (or found gone), and the questions they were asked."""
        news = self.remembered.news()
        if news:
            self.entries.restore(news)
        asked, self._questions_read = self.shared.questions_since(
            self.corpus_key, self._questions_read
        )
        for shard, at in asked:
            self.history.asked_elsewhere(shard, at)
        self._adopt_markers()

    def _cold_ids(self, corpora: dict[int, Corpus], chosen: Sequence[Shard]) -> set[str]:
        """The entries of `chosen` a question would write now: those not alive, of each
        shard whose furthest entry is not alive."""
        now, cold = self.clock(), set()
        for shard in chosen:
            anchors = shard.plan.anchors
            ids = corpora[shard.number].anchor_ids.get(shard.number, {})
            if anchors and not self.entries.alive(ids[anchors[-1]], now):
                cold |= {ids[a] for a in anchors if not self.entries.alive(ids[a], now)}
        return cold

    async def _written_elsewhere(self, cold: set[str]) -> None:
        """Wait while another instance writes one of `cold` (until its response begins or
        ends, or it is gone: accounting/shared.py). Polled: processes share no event."""
        log.info("another instance on this state folder is writing this cold prefix: "
                 "waiting to read it")  # fmt: skip
        while self.shared.held_by_others(self._backend_key, cold, self.clock()):  # noqa: ASYNC110
            await anyio.sleep(CLAIM_POLL_SECONDS)

    async def claim_to_write(self, identities: Collection[str]) -> bool:
        """Whether this instance may write `identities` now (claimed for it, in one
        transaction); if another instance on the state folder is writing one of them, wait
        until its response has begun or ended, learn what it wrote, and say no: the caller
        looks again at what is left to write (a staged build's next slice)."""
        wanted = set(identities)
        if self.shared.claim(self._backend_key, wanted, now=self.clock(), hold=CLAIM_SECONDS):
            self._claimed |= wanted
            return True
        await self._written_elsewhere(wanted)
        self.catch_up()
        return False

    def release_claims(self, identities: Collection[str]) -> None:
        """Let other instances write (or read) entries this one claimed."""
        mine = self._claimed & set(identities)
        if mine:
            self._claimed -= mine
            self.shared.release_claims(self._backend_key, mine)

    def _read_through(self, corpus: Corpus, shard: Shard) -> int:
        """The prompt tokens through `shard`'s furthest anchor alive in `corpus`."""
        live = self.live_ttls(corpus, shard)
        if not live:
            return 0
        plan = shard.plan
        return plan.blocks[plan.anchors.index(max(live))].prefix_tokens

    def _check_fits(self, shard: Shard) -> None:
        window = self.model.context_window
        if shard.plan.total_tokens + QUESTION_RESERVE + self.settings.max_answer_tokens > window:
            raise CorpusTooLargeError(
                f"shard {shard.number} is {shard.plan.total_tokens:,} tokens, more than "
                f"{self.model.id}'s {window:,}-token window allows with room for a question "
                "and an answer; lower --budget-tokens"
            )

    def _pending_write(self, corpus: Corpus, shard: Shard) -> anyio.Event | None:
        """The response being awaited that writes a cold entry of `shard`'s, if its end is
        not warm already."""
        plan = shard.plan
        if not plan.anchors:
            return None
        ids, now = corpus.anchor_ids.get(shard.number, {}), self.clock()
        if self.entries.alive(ids[plan.anchors[-1]], now):
            return None  # warm: nothing to wait for
        cold = (ids[a] for a in plan.anchors if not self.entries.alive(ids[a], now))
        return next((self._writing[i] for i in cold if i in self._writing), None)

    def _next_turn(self) -> int:
        """Which rotation of the lookback's reach the next request marks (plan/anchors)."""
        turn = self._turn
        self._turn += 1
        return turn

    async def _send_question(
        self, corpus: Corpus, shard: Shard, request: PreparedRequest, group: int | None = None
    ) -> ShardAnswer:
        """Send a prepared question and map its answer's citations to files and lines.
        Requests that would write the same cold entries wait for this one's response to
        begin (`_prepare_questions`)."""
        readable = anyio.Event()
        writes = request.writes
        for identity in writes:
            self._writing.setdefault(identity, readable)

        def release() -> None:
            if not readable.is_set():
                readable.set()
                for identity in writes:
                    if self._writing.get(identity) is readable:
                        del self._writing[identity]
                self.release_claims(writes)  # after `begun` published the entries

        def begun(usage: Usage) -> None:
            # The cache usage comes first: the entries this request writes are readable
            # from now on, and requests waiting for them can go.
            self.entries.answered(request, usage)
            release()

        async def send(wanted: Callable[[], bool]) -> Sent:
            try:
                sent = await self.caller.answer(request, begun, wanted=wanted, group=group)
            finally:
                release()  # failed before it began: a waiting request writes the prefix itself
            self._last_message[shard.number] = sent.message.id
            return sent

        sent = await self._read_to_the_end(send, request)
        message = sent.message
        mapped = map_answer(list(message.content), shard.plan, corpus.snapshot)
        raw_text = "".join(b.text for b in message.content if b.type == "text")
        return ShardAnswer(
            shard, mapped.text, mapped.citations, sent.usage, sent.cost_usd,
            sent.uncached_cost_usd, sent.backend, sent.latency_ms, raw_text, request.marked,
            message.id, sent.ledger_note, request.estimate_usd,
        )  # fmt: skip

    async def _read_to_the_end(
        self, send: Callable[[Callable[[], bool]], Awaitable[Sent]], request: PreparedRequest
    ) -> Sent:
        """`send(wanted)` run by the engine (`reading_answers`), awaited here: if this wait
        is cancelled, the response is still read to its end, its usage recorded and its
        cache entries remembered; `wanted()` turns false, so a failed attempt is not tried
        again for no one. Without `reading_answers`, sent here and cancelled with the wait."""
        readers = self._readers
        if readers is None:
            return await send(lambda: True)
        done = anyio.Event()
        outcome: list[Sent | BaseException] = []
        waiting = [True]
        held: list[Callable[[], None]] = []  # the cap's hold, once no question waits

        async def read() -> None:
            try:
                outcome.append(await send(lambda: waiting[0]))
            except Exception as exc:  # handed to the waiter; logged if no one waits
                outcome.append(exc)
                if not waiting[0]:
                    log.warning("shard %d, given up: %s", request.shard, exc)
            finally:
                done.set()
                for release in held:
                    release()  # recorded in the ledger by now, or failed
                if not waiting[0]:
                    self.read_for_no_one -= 1

        readers.start_soon(read)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            if not done.is_set():
                waiting[0] = False
                # The question's own check ends with it: the cap counts this request on.
                held.append(self.caller.cap.hold(request.estimate_usd))
                self.read_for_no_one += 1
                log.info("shard %d: the answer is given up; its response is read to the end "
                         "in the background", request.shard)  # fmt: skip
            raise
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    # --- local tools: no API call ------------------------------------------------------

    def search(self, query: str, limit: int) -> list[Hit]:
        if not query.strip():
            raise InvalidArgumentError("query is empty: pass words to look for")
        return self.current.index.search(query, limit)

    def document(self, path: str) -> Document:
        """A document of the current snapshot, never read from disk (browse.find_document)."""
        return browse.find_document(self.current.snapshot, path)

    def totals(self, since: float | None = None, backend: str | None = None) -> Totals:
        return self.ledger.totals(self.corpus_key, since, backend)

    def skipped_summary(self) -> dict[str, int]:
        return browse.skipped_summary(self.current.snapshot)

    def block_of(self) -> dict[str, tuple[int, int]]:
        return browse.block_of(self.current)

    def describe_layout(self) -> list[dict[str, Any]]:
        return browse.describe_layout(self.current)

    # --- warming (warm.py) -------------------------------------------------------------

    def keeps_cache(self) -> bool:
        """Whether this engine sends background requests now: it is alone, or it keeps the
        cache for the instances sharing its state folder (confirmed by a beat now)."""
        return self.keeper is None or self.keeper.confirm()

    def prepare_warming(
        self,
        kind: RequestKind,
        corpus: Corpus,
        shard: Shard,
        marking: Marking = BY_POLICY,
    ) -> PreparedRequest:
        """The `max_tokens: 0` request that writes (or reads) what an ask on `shard` would,
        marked as `marking` says (engine/warm.py)."""
        # Prepared as an ask's, with its max_tokens, then made a warming one: the request
        # must be what an ask would send.
        request = prepare_request(
            kind, corpus, shard, WARM_QUESTION, model=self.model,
            max_tokens=self.settings.max_answer_tokens,
            live=self.live_ttls(corpus, shard),
            decision=self.ttl_decision(shard) if marking.ttl is None else None,
            turn=self._next_turn(), now=self.clock(), marking=marking,
        )  # fmt: skip
        return request.warming(kind, self.model)

    # --- the TTL policy (policy.py) and its markers; keep-warm: keeping.py -------------

    @property
    def prices(self) -> Prices:
        return Prices(
            self.model.cache_read_multiplier,
            self.model.cache_write_5m_multiplier,
            self.model.cache_write_1h_multiplier,
        )

    def ttl_decision(self, shard: Shard) -> Decision:
        plan = shard.plan
        stable = plan.stable_tokens
        forced: Ttl | None = None if self.settings.ttl == "auto" else self.settings.ttl
        return decide(
            self.history.gaps(shard.number),
            edits_per_question=self.history.edits_per_question(shard),
            edit_tokens=plan.edit_tokens,
            stable_tokens=stable,
            tail_tokens=plan.total_tokens - stable,
            prices=self.prices,
            forced=forced,
        )

    def shard_state(self, corpus: Corpus, shard: Shard) -> ShardState:
        """What the keep-warm rules (cache/keeping.py) need to know of `shard` now."""
        self.catch_up()
        live = self.live_ttls(corpus, shard)
        ids = corpus.anchor_ids.get(shard.number, {})
        forced: Ttl | None = None if self.settings.ttl == "auto" else self.settings.ttl
        return ShardState(
            last_asked=self.history.last_asked(shard.number),
            decision=self.ttl_decision(shard),
            live=live,
            expires={a: self.entries.expires(ids[a]) for a in live},
            gaps=self.history.gaps(shard.number),
            edits_per_question=self.history.edits_per_question(shard),
            prices=self.prices,
            fixed_ttl=forced,
        )

    def live_ttls(self, corpus: Corpus, shard: Shard) -> dict[int, Ttl]:
        """`shard`'s anchors whose cache entries are alive, with the TTL each was written with."""
        ids, now = corpus.anchor_ids.get(shard.number, {}), self.clock()
        return self.entries.live(ids, shard.plan.anchors, now)

    def _with_question_markers(self, corpus: Corpus, shard: Shard) -> Corpus:
        """`corpus` with the markers a question on `shard` sends now (markers.for_question)."""
        plan = shard.plan
        if not plan.cached:
            return corpus
        decision = self.ttl_decision(shard)
        stable = plan.stable_tokens
        markers = corpus.markers.get(shard.number, {})
        wanted = marker_blocks.for_question(
            plan, markers, self.live_ttls(corpus, shard),
            upgrade_stable=(decision.upgrade or decision.stable_ttl == "1h")
            and upgrades_at_question(stable, plan.total_tokens - stable, self.prices),
            hold_tail=self.settings.ttl != "5m",
        )  # fmt: skip
        return corpus if wanted == markers else self._with_markers(corpus, shard, wanted)

    def tail_held(self, corpus: Corpus, shard: Shard) -> Corpus:
        """`corpus` with a marker after `shard`'s tail, for a keep-warm request to hold it."""
        markers = corpus.markers.get(shard.number, {})
        return self._with_markers(
            corpus, shard, marker_blocks.with_one_more(markers, shard.plan.anchors[-1])
        )

    def upgraded(self, corpus: Corpus, shard: Shard) -> Corpus:
        """`corpus` with one more marker block after `shard`'s stable part, installed as
        the live corpus if `corpus` still is. Anchors from there on get new identities."""
        stable = shard.plan.stable_anchor
        if stable is None:
            return corpus  # nothing cached, nothing to upgrade
        return self._with_markers(
            corpus, shard, marker_blocks.with_one_more(corpus.markers.get(shard.number, {}), stable)
        )

    def _with_markers(self, corpus: Corpus, shard: Shard, markers: dict[int, int]) -> Corpus:
        """`corpus` with `markers` for `shard`, installed in the live corpus if that is
        `corpus`, or `corpus` with other shards' markers changed since (a question asked
        several shards at once)."""
        new = live_corpus.marked(corpus, shard.number, markers, self.model.id)
        live = self._corpus
        if live is corpus:
            self._corpus = new
        elif live is not None and live.layout is corpus.layout:
            self._corpus = live_corpus.marked(live, shard.number, markers, self.model.id)
        # The other instances on the state folder carry them too (`catch_up`): a question
        # there must send the prefix this instance's request made a 1-hour entry of.
        identity = marker_blocks.plan_identity(shard.plan)
        self.shared.publish_markers(self.corpus_key, shard.number, identity, markers)
        return new

    def _adopt_markers(self) -> None:
        """The marker blocks another instance placed last on a shard of the same plan."""
        corpus = self._corpus
        if corpus is None:
            return
        adopted = corpus
        for number, plan, markers in self.shared.markers_of_others(self.corpus_key):
            if adopted.markers.get(number, {}) == markers:
                continue  # the usual case, checked before hashing the shard's documents
            shard = next((s for s in adopted.shards if s.number == number), None)
            if shard is not None and marker_blocks.plan_identity(shard.plan) == plan:
                adopted = live_corpus.marked(adopted, number, markers, self.model.id)
        if adopted is not corpus:
            self._corpus = adopted


def _known_limits(
    settings: Settings, model: ModelSpec, now: float
) -> tuple[RateLimits, RateLimits]:
    """The rate limits assumed before the first response, of messages and of token
    counting: the tier's, if one is set by `--tier` or by the limits file's own `tier`,
    as the emulator it starts applies it (the table read once for both)."""
    if settings.tier is None and settings.limits_file is None:
        return RateLimits.unknown(), RateLimits.unknown()
    table = load_limits(settings.limits_file)
    tier = settings.tier if settings.tier is not None else table.tier
    if tier is None:
        return RateLimits.unknown(), RateLimits.unknown()
    return limits_at_tier(table, tier, model.id, now), count_limits_at_tier(table, tier, now)


def _backend_key(backend: Backend) -> str:
    """Which API's cache entries the engine's beliefs are about: its kind and address,
    and the emulator's process (whose cache ends with it)."""
    return f"{backend.kind} {backend.client.base_url} {backend.emulator_pid}"


def _same_folder(snapshot: Snapshot, result: ScanResult) -> bool:
    """Whether a scan found what `snapshot` holds: the same documents with the same text,
    and the same files left out for the same reasons."""

    def sent(doc: Document) -> tuple[str, str, str, tuple[int, ...]]:
        return (doc.path, doc.sha256, doc.encoding_note, doc.pages)

    # A rescan reuses the documents it did not read again: most are the very same objects.
    return (
        len(snapshot.documents) == len(result.documents)
        and all(
            a is b or sent(a) == sent(b)
            for a, b in zip(snapshot.documents, result.documents, strict=True)
        )
        and [(s.path, s.reason) for s in snapshot.skipped]
        == [(s.path, s.reason) for s in result.skipped]
    )
