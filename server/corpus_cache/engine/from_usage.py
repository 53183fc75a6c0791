"""Token figures learned from the usage of the engine's own requests (api/learned.py): what
each response says of the prompt through its last breakpoint, kept per shard for the next
response to be compared with, turned into exact counts and sums (stored by the counter),
and the live corpus's figures refined with them."""

from __future__ import annotations

import logging
from dataclasses import replace

from corpus_cache.api.learned import Learned, Observed, head_from, resolve, runs
from corpus_cache.api.prepared import PreparedRequest
from corpus_cache.api.tokens import Counts, TokenCounter, content_key
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.models.pricing import Usage

log = logging.getLogger(__name__)

OBSERVED_PER_SHARD = 16  # prefixes kept per shard: enough for a build slice to meet the last


class FromUsage:
    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._observed: dict[int, list[Observed]] = {}
        self._paths: dict[str, str] = {}  # content key -> path, of the documents observed

    def answered(self, corpus: Corpus, request: PreparedRequest, usage: Usage) -> Corpus | None:
        """`corpus` with the figures `request`'s response made exact, or None if it taught
        nothing new (its prompt holds more than counted blocks through its last breakpoint,
        nothing was cached, or everything it says was known)."""
        tokens = usage.cache_read_tokens + usage.cache_write_tokens
        if request.prefix is None or tokens <= 0:
            return None
        observed = Observed(tuple(key for _, key in request.prefix), tokens)
        seen = self._observed.setdefault(request.shard, [])
        if observed in seen:
            return None
        seen.append(observed)
        del seen[:-OBSERVED_PER_SHARD]
        self._paths.update((key, path) for path, key in request.prefix)
        known = self._known(corpus)
        shards = [request.shard]
        head = self._head(known)
        if head is not None and head != self._counter.head:
            self._counter.learned_head(head)
            shards = list(self._observed)  # the first run of every shard is known now
        exact: dict[str, int] = {}
        sums: dict[tuple[str, ...], int] = {}
        for shard in shards:
            learned = resolve(runs(self._observed[shard], self._counter.head), known)
            if learned.conflicts:
                log.info("shard %d: %d run(s) of documents whose usage contradicts their "
                         "counts; nothing learned from them", shard, learned.conflicts)  # fmt: skip
            exact.update(learned.exact)
            sums.update(learned.sums)
        if not exact and not sums:
            return None
        self._counter.learn(Learned(exact, sums))
        counts = Counts(corpus.tokens, corpus.estimated, corpus.estimate_error)
        refined = self._counter.refined(counts, corpus.snapshot.documents)
        if refined.tokens == corpus.tokens and refined.estimated == corpus.estimated:
            return None
        log.info("exact token figures learned from usage: %d document(s) estimated before, "
                 "%d still estimated", len(corpus.estimated), len(refined.estimated))  # fmt: skip
        return replace(
            corpus, tokens=refined.tokens, estimated=refined.estimated,
            estimate_error=refined.error,
        )  # fmt: skip

    def _known(self, corpus: Corpus) -> dict[str, int]:
        """The exact counts of the documents observed: counted, or learned."""
        known = dict(self._counter.learned)
        for key, path in self._paths.items():
            doc = corpus.snapshot.get(path)
            if (
                path not in corpus.estimated
                and path in corpus.tokens
                and doc is not None
                and content_key(doc) == key
            ):
                known[key] = corpus.tokens[path]
        return known

    def _head(self, known: dict[str, int]) -> int | None:
        return head_from((o for seen in self._observed.values() for o in seen), known)
