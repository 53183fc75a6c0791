"""What the engine has observed, for the planner and the TTL policy to decide from: each
document's edits (the planner puts what changes least first) and when questions were
asked of each shard (the policy chooses TTLs from the gaps between them)."""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from corpus_cache.accounting.ledger import LedgerRow
from corpus_cache.api.tokens import content_key
from corpus_cache.cache.policy import RECENT_GAPS
from corpus_cache.corpus.changes import document_changes
from corpus_cache.corpus.documents import Document, find
from corpus_cache.plan.layout import Shard
from corpus_cache.plan.stability import DocInfo, EditPattern


@dataclass(frozen=True)
class _DocumentHistory:
    """What has been seen of one document."""

    key: str
    first_seen: float
    last_change: float
    edits: int

    def info(self, path: str, tokens: int, edit_weight: float) -> DocInfo:
        return DocInfo(
            path, tokens, self.key, self.last_change, self.edits, self.first_seen,
            edit_weight=edit_weight,
        )  # fmt: skip


class History:
    def __init__(self, asked: Mapping[int, Sequence[float]] | None = None) -> None:
        """`asked`: question times per shard, oldest first, from before a restart."""
        self._documents: dict[str, _DocumentHistory] = {}
        self._pattern = EditPattern()  # for DocInfo.edit_weight
        self._infos: dict[str, tuple[_DocumentHistory, DocInfo]] = {}  # the last views made
        self._edited: set[str] = set()  # documents edited at least once, whose weights move
        # The documents last observed, and those the last views were made of (in path order).
        self._observed: Sequence[Document] = ()
        self._viewed: Iterable[Document] | None = None
        self._asked = {shard: list(times) for shard, times in (asked or {}).items()}
        self._questions = Counter({shard: len(times) for shard, times in self._asked.items()})

    @classmethod
    def from_requests(cls, rows: Sequence[LedgerRow]) -> History:
        """A history that knows the question times of ledger `rows` (newest first, as
        Ledger.requests gives them), so that a restart does not forget how questions
        arrive."""
        asked: dict[int, list[float]] = {}
        for row in reversed(rows):
            if row.kind == "ask" and row.outcome == "ok" and row.shard is not None:
                asked.setdefault(int(row.shard), []).append(float(row.at))
        return cls(asked)

    # --- documents ---------------------------------------------------------------------

    def observe(
        self, documents: Sequence[Document], tokens: Mapping[str, int], now: float
    ) -> list[DocInfo]:
        """Update the edit history from a scan (a changed key is an edit, seen now) and
        return the planner's view of `documents`. Documents gone from the scan are forgotten.

        `documents` in path order, as a snapshot holds them; `tokens` by path. When the last
        view was made of the documents last observed, only the documents that differ from
        those are looked at again (a rescan after one save changes one of 10,000), with the
        views whose edit weight or token figure moved; the result is the same."""
        if self._viewed is None or self._viewed is not self._observed:
            return self._observe_all(documents, tokens, now)
        added, removed, edited = document_changes(self._observed, documents)
        pattern = self._pattern
        for path in removed:
            del self._documents[path]
            del self._infos[path]
            self._edited.discard(path)
        fresh = {path: doc for path in sorted(added + edited) if (doc := find(documents, path))}
        for path, doc in fresh.items():
            seen = self._seen(doc, now, self._documents.get(path))
            self._documents[path] = seen
            if seen.edits:
                self._edited.add(path)
        self._observed = self._viewed = documents
        again = set(fresh)
        if self._pattern is not pattern:  # an edit: the likely next edits are others
            again |= self._edited | {p for p in (pattern.last, self._pattern.last) if p}
        views = self._infos
        # A figure may change with no edit: an estimate made again with a new calibration.
        again |= {
            d.path
            for d in documents
            if (view := views.get(d.path)) is None or view[1].tokens != tokens[d.path]
        }
        for path in again & self._documents.keys():  # the last edited may be gone
            views[path] = self._view(path, tokens[path])
        return [views[doc.path][1] for doc in documents]

    def _observe_all(
        self, documents: Sequence[Document], tokens: Mapping[str, int], now: float
    ) -> list[DocInfo]:
        before, self._documents = self._documents, {}
        for doc in documents:
            self._documents[doc.path] = self._seen(doc, now, before.get(doc.path))
        self._edited = {path for path, seen in self._documents.items() if seen.edits}
        self._observed = documents
        return self.doc_infos(documents, tokens)

    def _seen(self, doc: Document, now: float, seen: _DocumentHistory | None) -> _DocumentHistory:
        """What is known of `doc` after this scan (`seen`: before it); an edit is counted in
        the pattern of edits."""
        key = content_key(doc)
        if seen is None:
            return _DocumentHistory(key, now, min(now, doc.mtime_ns / 1e9), 0)
        if seen.key == key:
            return seen
        self._pattern = self._pattern.after(doc.path)
        return _DocumentHistory(key, seen.first_seen, now, seen.edits + 1)

    def _view(self, path: str, count: int) -> tuple[_DocumentHistory, DocInfo]:
        """The planner's view of `path` as last observed, the last one made if it still holds."""
        seen = self._documents[path]
        weight = self._pattern.next_edit_weight(path, seen.edits)
        before = self._infos.get(path)
        if (
            before is not None
            and before[0] is seen
            and before[1].tokens == count
            and before[1].edit_weight == weight
        ):
            return before
        return seen, seen.info(path, count, weight)

    def doc_infos(self, documents: Iterable[Document], tokens: Mapping[str, int]) -> list[DocInfo]:
        """The planner's view of `documents` as last observed; any never observed are left out.
        A document's view is made again only when something it holds changed."""
        infos: list[DocInfo] = []
        made: dict[str, tuple[_DocumentHistory, DocInfo]] = {}
        for doc in documents:
            if doc.path not in self._documents:
                continue
            made[doc.path] = view = self._view(doc.path, tokens[doc.path])
            infos.append(view[1])
        self._infos = made
        self._viewed = documents if isinstance(documents, tuple) else None
        return infos

    # --- questions ---------------------------------------------------------------------

    def asked(self, shard: int, at: float) -> None:
        """A question on `shard` was sent at `at`."""
        times = self._asked.setdefault(shard, [])
        times.append(at)
        del times[: -(RECENT_GAPS + 1)]  # the policy weighs only the recent gaps
        self._questions[shard] += 1

    def asked_elsewhere(self, shard: int, at: float) -> None:
        """A question on `shard` was sent at `at` by another instance sharing the state
        folder: its gaps are the policy's too, in time order with this one's."""
        times = self._asked.setdefault(shard, [])
        bisect.insort(times, at)
        del times[: -(RECENT_GAPS + 1)]
        self._questions[shard] += 1

    def gaps(self, shard: int) -> list[float]:
        times = self._asked.get(shard, [])
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def last_asked(self, shard: int) -> float | None:
        """When the last question on `shard` was sent, if any was."""
        times = self._asked.get(shard)
        return times[-1] if times else None

    def edits_per_question(self, shard: Shard) -> float:
        asked = self._questions[shard.number]
        # A path appears twice in a plan keeping its old copy: count its edits once.
        paths = set(shard.plan.order) & self._documents.keys()
        return sum(self._documents[p].edits for p in paths) / asked if asked else 0.0
