"""The engine: the live corpus (snapshot, token counts, plan, search index) and the work
the tools do with it: ask Claude, search, read, report."""

from __future__ import annotations

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
    CorpusTooLargeError,
    InvalidArgumentError,
    NotInCorpusError,
)
from .ledger import Ledger, RequestRecord, Totals
from .paths import corpus_relative
from .plan.layout import Plan, PlannedDocument, plan_layout
from .pricing import Usage, cost_usd, uncached_cost_usd
from .request import INSTRUCTIONS, Citation, build_request, map_answer
from .search import Hit, SearchIndex
from .tokens import TokenCounter

log = logging.getLogger(__name__)

QUESTION_RESERVE = 2_000  # tokens kept free in the window for the question


@dataclass(frozen=True)
class Corpus:
    """Everything a question is answered against; replaced whole, never changed."""

    snapshot: Snapshot
    tokens: dict[str, int]
    plan: Plan
    index: SearchIndex = field(repr=False)

    @property
    def corpus_tokens(self) -> int:
        return sum(self.tokens.values())


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


class Engine:
    def __init__(
        self, settings: Settings, catalog: Catalog, backend: Backend, ledger: Ledger
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.model: ModelSpec = catalog.get(settings.model)
        self.backend = backend
        self.ledger = ledger
        self.counter = TokenCounter(backend.client, self.model.id, ledger)
        self._corpus: Corpus | None = None
        self._version = 0
        self._instructions_tokens: int | None = None
        self._refreshing = anyio.Lock()
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
        plan = plan_layout(
            [PlannedDocument(path, count) for path, count in tokens.items()],
            min_cacheable_tokens=self.model.min_cacheable_tokens,
            instructions_tokens=self._instructions_tokens,
        )
        self._version += 1
        snapshot = Snapshot(
            self.settings.corpus, self._version, time.time(), result.documents, result.skipped
        )
        corpus = Corpus(snapshot, tokens, plan, SearchIndex(snapshot))
        log.info(
            "corpus v%d: %d documents, %d tokens, %d left out; %s",
            snapshot.version, len(snapshot.documents), corpus.corpus_tokens,
            len(snapshot.skipped), plan.note,
        )  # fmt: skip
        return corpus

    # --- ask --------------------------------------------------------------------------

    async def ask(self, question: str) -> Answer:
        question = question.strip()
        if not question:
            raise InvalidArgumentError("question is empty: ask something about the documents")
        corpus = self.current
        if not corpus.snapshot.documents:
            raise NotInCorpusError(
                f"the corpus folder {self.settings.corpus} holds no documents to ask about"
            )
        window = self.model.context_window
        needed = corpus.plan.total_tokens + QUESTION_RESERVE + self.settings.max_answer_tokens
        if needed > window:
            raise CorpusTooLargeError(
                f"the corpus is {corpus.plan.total_tokens:,} tokens, more than {self.model.id}'s "
                f"{window:,}-token window allows with room for a question and an answer. "
                "Point corpus-cache at a smaller folder or exclude files with a .gitignore."
            )
        params = build_request(
            corpus.plan,
            corpus.snapshot,
            question,
            model=self.model.id,
            max_tokens=self.settings.max_answer_tokens,
        )
        started = time.perf_counter()
        try:
            raw = await self.backend.client.messages.with_raw_response.create(**params)
            message = await raw.parse()
        except anthropic.APIError as exc:
            latency = (time.perf_counter() - started) * 1000
            self._record_failure("ask", corpus, exc, latency)
            raise ApiCallError(describe_api_error(exc)) from exc
        latency = (time.perf_counter() - started) * 1000
        backend = backend_of_response(raw.headers, self.backend.kind)
        usage = Usage.from_api(message.usage)
        cost, uncached = cost_usd(usage, self.model), uncached_cost_usd(usage, self.model)
        self.ledger.record(
            RequestRecord(
                kind="ask", corpus=self.corpus_key, model=self.model.id, backend=backend,
                outcome="ok", usage=usage, cost_usd=cost, uncached_cost_usd=uncached,
                snapshot=corpus.snapshot.version, message_id=message.id, latency_ms=latency,
            )
        )  # fmt: skip
        mapped = map_answer(list(message.content), corpus.plan, corpus.snapshot)
        return Answer(
            text=mapped.text,
            citations=mapped.citations,
            usage=usage,
            cost_usd=cost,
            uncached_cost_usd=uncached,
            backend=backend,
            model=self.model.id,
            snapshot_version=corpus.snapshot.version,
            snapshot_time=corpus.snapshot.created_at,
            latency_ms=latency,
        )

    def _record_failure(
        self, kind: str, corpus: Corpus, exc: anthropic.APIError, latency: float
    ) -> None:
        # A failed call bills nothing: no usage, no cost.
        self.ledger.record(
            RequestRecord(
                kind=kind, corpus=self.corpus_key, model=self.model.id,
                backend=self.backend.kind, outcome="error", snapshot=corpus.snapshot.version,
                latency_ms=latency, error=describe_api_error(exc),
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

    def block_of(self) -> dict[str, int]:
        return {
            path: number
            for number, block in enumerate(self.current.plan.blocks, start=1)
            for path in block.paths
        }

    def describe_plan(self) -> list[dict[str, Any]]:
        return [
            {
                "block": number,
                "documents": len(block.paths),
                "tokens": block.tokens,
                "prefix_tokens": block.prefix_tokens,
                "ttl": block.ttl,
                "first": block.paths[0] if block.paths else None,
                "last": block.paths[-1] if block.paths else None,
            }
            for number, block in enumerate(self.current.plan.blocks, start=1)
        ]


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]
