"""Token counts from the API's free count_tokens endpoint, cached in the ledger.

A document's count is the count of a request holding it as the request builder renders it,
minus the count of the same request without it. Counts are keyed by the rendered block's
content, the model and the backend that counted them, so a restart or a revert does not
count again, a count is never reused across models (their tokenizers differ), and the
offline emulator's approximations never stand for the API's counts. The backend is the one
that answered the first count of this process (the baseline), as its response says.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.caller import ApiCaller
from corpus_cache.api.request import document_block
from corpus_cache.corpus.documents import Document
from corpus_cache.errors import ApiCallError

log = logging.getLogger(__name__)

_PROBE = {"type": "text", "text": "?"}


def content_key(doc: Document) -> str:
    """What a count depends on: the document's title (its path) and its text."""
    return _content_key(doc.path, doc.sha256)


@functools.lru_cache(maxsize=1 << 16)
def _content_key(path: str, sha256: str) -> str:
    # Cached: every rescan asks again for every document, and few of them changed.
    return hashlib.sha256(f"{path}\0{sha256}".encode()).hexdigest()


class TokenCounter:
    def __init__(
        self, caller: ApiCaller, model: str, ledger: Ledger, *, concurrency: int = 8
    ) -> None:
        self._caller = caller
        self._model = model
        self._ledger = ledger
        self._limit = anyio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._baseline: int | None = None
        self.backend: str | None = None  # which backend counts: known after the baseline
        self._recent: dict[str, int] = {}

    async def _count(self, content: list[dict[str, Any]], system: str | None = None) -> int:
        async with self._limit:
            return (await self._caller.count_tokens(content, system)).tokens

    async def _baseline_tokens(self) -> int:
        if self._baseline is None:
            async with self._limit:
                counted = await self._caller.count_tokens([_PROBE])
            self._baseline, self.backend = counted.tokens, counted.backend
        return self._baseline

    async def count_system(self, text: str) -> int:
        """Tokens that a fixed system text adds to every request."""
        baseline = await self._baseline_tokens()
        with_system = await self._count([_PROBE], system=text)
        return max(0, with_system - baseline)

    async def count(
        self,
        documents: Sequence[Document],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, int]:
        """Tokens per document path. Only documents never counted for this model hit the API."""
        keys = {doc.path: content_key(doc) for doc in documents}
        baseline = await self._baseline_tokens()  # and which backend counts
        backend = self.backend or ""
        # The last call's counts are kept in memory: a rescan after a save asks SQLite only
        # about what changed.
        known = {key: self._recent[key] for key in keys.values() if key in self._recent}
        if len(known) < len(keys):
            unknown = [key for key in keys.values() if key not in known]
            known.update(self._ledger.token_counts(self._model, backend, unknown))
        missing = [doc for doc in documents if keys[doc.path] not in known]
        if missing:
            log.info("counting tokens of %d documents with %s (%s)", len(missing), self._model,
                     backend)  # fmt: skip
            fresh: dict[str, int] = {}
            failed: list[ApiCallError] = []
            done = 0

            async def one(doc: Document) -> None:
                nonlocal done
                try:
                    total = await self._count([document_block(doc), _PROBE])
                except ApiCallError as exc:  # raised below, unwrapped from the task group
                    failed.append(exc)
                    group.cancel_scope.cancel()
                    return
                fresh[keys[doc.path]] = max(1, total - baseline)
                done += 1
                if progress is not None:
                    progress(done, len(missing))

            # A few workers share one queue: a task per document would hold memory for all
            # of them at once (about 4 KB each, 400 MB for a 100,000-file folder).
            queue = iter(missing)

            async def worker() -> None:
                for doc in queue:
                    await one(doc)

            async with anyio.create_task_group() as group:
                for _ in range(min(self._concurrency, len(missing))):
                    group.start_soon(worker)
            if fresh:  # what was counted before a failure is kept
                self._ledger.store_token_counts(self._model, backend, fresh)
            if failed:
                raise failed[0]
            known.update(fresh)
        self._recent = {key: known[key] for key in keys.values()}
        return {doc.path: known[keys[doc.path]] for doc in documents}
