"""Token counts from the API's free count_tokens endpoint, cached in the ledger, and local
estimates where counting every file would take too long.

A document's count is the count of a request holding it as the request builder renders it,
minus the count of the same request without it. Counts are keyed by the rendered block's
content, the model and the backend that counted them, so a restart or a revert does not
count again, a count is never reused across models (their tokenizers differ), and the
offline emulator's approximations never stand for the API's counts. The backend is the one
that answered the first count of this process (the baseline), as its response says.

A refresh that finds at most `EXACT_UP_TO` documents never counted (an edit, a few new
files) counts each of them. More than that (a cold start on a large folder, a checkout)
would be a call per file against token counting's own per-minute limit: those documents
are estimated instead (api/estimate.py), calibrated per model and backend on a few of them
(`choose_samples`), whose exact counts are stored with what the estimate knew of them so
that the calibration outlives the process. A cold start makes at most `START_CALLS` calls:
the baseline, the system prompt, and the samples. Sketches are stored by content key, so a
restart sketches only new texts.

The usage of the requests that follow makes figures exact (api/learned.py): what a
response teaches is stored here like a count (a single document) or as a sum (several),
and `refined` puts it in the figures the planner gets.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.caller import ApiCaller
from corpus_cache.api.estimate import (
    SAMPLES_PER_START,
    SKETCH_VERSION,
    Calibration,
    Sketch,
    calibrate,
    choose_samples,
    sketch,
)
from corpus_cache.api.learned import Learned, shares
from corpus_cache.api.request import document_block
from corpus_cache.corpus.documents import Document
from corpus_cache.errors import ApiCallError

log = logging.getLogger(__name__)

_PROBE = {"type": "text", "text": "?"}
START_CALLS = 25  # count_tokens calls a cold start makes at most, whatever the folder's size
# Documents never counted that a refresh counts one by one; past this they are estimated.
# With the baseline and the system prompt, a start stays within START_CALLS.
EXACT_UP_TO = START_CALLS - 2
assert SAMPLES_PER_START <= EXACT_UP_TO


def content_key(doc: Document) -> str:
    """What a count depends on: the document's title (its path) and its text."""
    return _content_key(doc.path, doc.sha256)


@functools.lru_cache(maxsize=1 << 16)
def _content_key(path: str, sha256: str) -> str:
    # Cached: every rescan asks again for every document, and few of them changed.
    return hashlib.sha256(f"{path}\0{sha256}".encode()).hexdigest()


@dataclass(frozen=True)
class Counts:
    """Tokens per document path, as the planner uses them: a count where there is one, the
    upper end of the estimate's bound where there is not. `estimated`: the point estimate
    of each document not counted (what to show, with "estimated"); `error`: the largest
    relative error bound among them (0.0 when every figure is a count)."""

    tokens: dict[str, int]
    estimated: dict[str, int] = field(default_factory=dict)
    error: float = 0.0


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
        self._sketches: dict[str, Sketch] = {}  # by content key: documents estimated lately
        self._calibration: Calibration | None = None
        self.calls = 0  # count_tokens calls made by this counter
        self.sketched = 0  # documents whose text this counter sketched (not found stored)
        # What every request holds before its first document, learned from usage.
        self.head: int | None = None
        self._head_key: str | None = None
        self.learned: dict[str, int] = {}  # exact counts learned from usage, by content key
        self._sums: dict[tuple[str, ...], int] = {}  # sums learned from usage
        self._stored_sums: dict[tuple[str, ...], int] | None = None  # loaded when needed

    async def _count(self, content: list[dict[str, Any]], system: str | None = None) -> int:
        async with self._limit:
            self.calls += 1
            return (await self._caller.count_tokens(content, system)).tokens

    async def _baseline_tokens(self) -> int:
        if self._baseline is None:
            async with self._limit:
                self.calls += 1
                counted = await self._caller.count_tokens([_PROBE])
            self._baseline, self.backend = counted.tokens, counted.backend
        return self._baseline

    async def count_system(self, text: str) -> int:
        """Tokens that a fixed system text adds to every request."""
        baseline = await self._baseline_tokens()
        with_system = await self._count([_PROBE], system=text)
        self._head_key = hashlib.sha256(text.encode()).hexdigest()
        self.head = self._ledger.token_head(self._model, self.backend or "", self._head_key)
        return max(0, with_system - baseline)

    def learned_head(self, head: int) -> None:
        """What every request holds before its first document block (framing and the
        system prompt), as usage showed it: stored, by model, backend and system text. Not
        from count_tokens: its counts may include a few tokens of its own (the documents'
        counts are differences, which cancel them; the head is not)."""
        if head != self.head and self._head_key is not None:
            self.head = head
            self._ledger.store_token_head(self._model, self.backend or "", self._head_key, head)

    def learn(self, learned: Learned) -> None:
        """Store what the usage of a request made exact: single counts (calibrating the
        estimate, like a sample, when the document was sketched) and sums of several."""
        backend = self.backend or ""
        fresh = {k: n for k, n in learned.exact.items() if self.learned.get(k) != n}
        if fresh:
            self.learned.update(fresh)
            self._ledger.store_token_counts(
                self._model, backend, fresh,
                {k: (self._sketches[k].kind, self._sketches[k].prior)
                 for k in fresh if k in self._sketches},
            )  # fmt: skip
        sums = {keys: n for keys, n in learned.sums.items() if self._sums.get(keys) != n}
        if sums:
            self._sums.update(sums)
            kinds: dict[tuple[str, ...], tuple[str, float]] = {}
            for keys in sums:  # a sum of one kind of text calibrates that kind's ratio
                sketched = [self._sketches[k] for k in keys if k in self._sketches]
                if len(sketched) == len(keys) and len({s.kind for s in sketched}) == 1:
                    kinds[keys] = (sketched[0].kind, sum(s.prior for s in sketched))
            self._ledger.store_token_sums(self._model, backend, sums, kinds)
        if fresh or sums:
            self._calibration = None  # refitted with them when next needed

    def refined(self, counts: Counts, documents: Sequence[Document]) -> Counts:
        """`counts` (of `documents`) with what the usage of requests taught: the exact count
        of an estimated document, and known sums shared among their estimated documents."""
        if not counts.estimated:
            return counts
        by_path = {doc.path: doc for doc in documents}
        keys = {p: content_key(by_path[p]) for p in counts.estimated if p in by_path}
        tokens, estimated = dict(counts.tokens), dict(counts.estimated)
        for path, key in keys.items():
            if key in self.learned:
                tokens[path] = self.learned[key]
                del estimated[path]
        paths = {keys[p]: p for p in estimated if p in keys}
        for group, total in self.sums_within(paths).items():
            split = shares(total, {k: float(estimated[paths[k]]) for k in group})
            for key, share in split.items():
                tokens[paths[key]] = estimated[paths[key]] = share
        return Counts(tokens, estimated, counts.error if estimated else 0.0)

    def sums_within(self, keys: Collection[str]) -> dict[tuple[str, ...], int]:
        """The sums known (learned now or stored) whose documents are all among `keys`."""
        if self._stored_sums is None:
            self._stored_sums = self._ledger.token_sums(self._model, self.backend or "")
        found = {**self._stored_sums, **self._sums}
        return {group: n for group, n in found.items() if all(k in keys for k in group)}

    async def count(
        self,
        documents: Sequence[Document],
        progress: Callable[[int, int], None] | None = None,
    ) -> Counts:
        """Tokens per document path. Only documents never counted for this model hit the API,
        and only `EXACT_UP_TO` of them: past that, they are estimated (see the module)."""
        keys = {doc.path: content_key(doc) for doc in documents}
        await self._baseline_tokens()  # and which backend counts
        backend = self.backend or ""
        # The last call's counts are kept in memory: a rescan after a save asks SQLite only
        # about what changed.
        known = {key: self._recent[key] for key in keys.values() if key in self._recent}
        if len(known) < len(keys):
            unknown = [key for key in keys.values() if key not in known]
            known.update(self._ledger.token_counts(self._model, backend, unknown))
        missing = [doc for doc in documents if keys[doc.path] not in known]
        estimated: dict[str, int] = {}
        error = 0.0
        if len(missing) <= EXACT_UP_TO:
            if missing:
                known.update(await self._count_each(missing, keys, backend, progress))
        else:
            sketches = await anyio.to_thread.run_sync(self._sketch_all, missing, keys)
            calibration, samples = await self._calibrated(
                missing, keys, sketches, backend, progress
            )
            known.update(samples)
            for doc in missing:
                key = keys[doc.path]
                if key in known:  # a sample, counted just now
                    continue
                guess = calibration.estimate(sketches[key])
                known[key] = guess.upper
                estimated[doc.path] = guess.tokens
                error = max(error, guess.error)
            self._sketches = {keys[d.path]: sketches[keys[d.path]] for d in missing}
        # Only counts are remembered: an estimate is made again, with the latest calibration.
        counted = set(keys.values()) - {keys[p] for p in estimated}
        self._recent = {key: known[key] for key in counted}
        return Counts({doc.path: known[keys[doc.path]] for doc in documents}, estimated, error)

    def _sketch_all(
        self, documents: Sequence[Document], keys: Mapping[str, str]
    ) -> dict[str, Sketch]:
        """The sketch of each of `documents`, by content key: from memory, else from the
        ledger (loaded in bulk: a warm restart reads no text again), else made now and
        stored. Sketching is seven regex passes over the text: 2 s for a 50 MB folder."""
        wanted = [keys[doc.path] for doc in documents]
        out = {key: self._sketches[key] for key in wanted if key in self._sketches}
        if len(out) < len(wanted):
            stored = self._ledger.sketches(SKETCH_VERSION, [k for k in wanted if k not in out])
            out.update((key, Sketch(kind, prior)) for key, (kind, prior) in stored.items())
        made: dict[str, Sketch] = {}
        for doc in documents:
            key = keys[doc.path]
            if key not in out:
                made[key] = out[key] = sketch(doc.text, doc.path)
        if made:
            self.sketched += len(made)
            self._ledger.store_sketches(
                SKETCH_VERSION, {key: (s.kind, s.prior) for key, s in made.items()}
            )
        return out

    async def _calibrated(
        self,
        missing: Sequence[Document],
        keys: Mapping[str, str],
        sketches: Mapping[str, Sketch],
        backend: str,
        progress: Callable[[int, int], None] | None,
    ) -> tuple[Calibration, dict[str, int]]:
        """The calibration for this model and backend, after counting the samples the kinds
        of text among `missing` still need (none once each kind has enough, restarts
        included: the samples are in the ledger), and the samples' counts by content key."""
        if self._calibration is None:
            self._calibration = calibrate(self._ledger.calibration_samples(self._model, backend))
        calibration = self._calibration
        have = {kind: fit.samples for kind, fit in calibration.fits.items()}
        by_key = {keys[d.path]: d for d in missing}
        wanted = choose_samples({k: sketches[k] for k in by_key}, have)
        if not wanted:
            return calibration, {}
        log.info(
            "calibrating the token estimate of %s (%s) on %d of %d documents",
            self._model, backend, len(wanted), len(missing),
        )  # fmt: skip
        counted = await self._count_each(
            [by_key[k] for k in wanted], keys, backend, progress, sketches
        )
        self._calibration = calibrate(self._ledger.calibration_samples(self._model, backend))
        if not self._calibration.fits:  # the ledger could not be read or written
            self._calibration = calibrate(
                (sketches[k].kind, sketches[k].prior, tokens) for k, tokens in counted.items()
            )
        return self._calibration, counted

    async def _count_each(
        self,
        documents: Sequence[Document],
        keys: Mapping[str, str],
        backend: str,
        progress: Callable[[int, int], None] | None,
        sketches: Mapping[str, Sketch] | None = None,
    ) -> dict[str, int]:
        """Count `documents` one by one, store the counts (with what the estimate knew of
        each: calibration), and return them by content key."""
        baseline = await self._baseline_tokens()
        log.info("counting tokens of %d documents with %s (%s)", len(documents), self._model,
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
                progress(done, len(documents))

        # A few workers share one queue: a task per document would hold memory for all
        # of them at once (about 4 KB each, 400 MB for a 100,000-file folder).
        queue = iter(documents)

        async def worker() -> None:
            for doc in queue:
                await one(doc)

        async with anyio.create_task_group() as group:
            for _ in range(min(self._concurrency, len(documents))):
                group.start_soon(worker)
        if fresh:  # what was counted before a failure is kept
            sketched = sketches or {}
            if sketches is None:  # every count calibrates the estimate: sketch it (cheap)
                by_key = {keys[d.path]: d for d in documents}
                sketched = {k: sketch(by_key[k].text, by_key[k].path) for k in fresh}
            self._ledger.store_token_counts(
                self._model, backend, fresh,
                {k: (sketched[k].kind, sketched[k].prior) for k in fresh if k in sketched},
            )  # fmt: skip
            self._calibration = None  # new samples: fitted again when next needed
        if failed:
            raise failed[0]
        return fresh
