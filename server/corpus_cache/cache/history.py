"""What the engine has observed, for the planner and the TTL policy to decide from: each
document's edits (the planner puts what changes least first) and when questions were
asked of each shard (the policy chooses TTLs from the gaps between them)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from corpus_cache.accounting.ledger import LedgerRow
from corpus_cache.api.tokens import content_key
from corpus_cache.cache.policy import RECENT_GAPS
from corpus_cache.corpus.documents import Document
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
        return the planner's view of `documents`. Documents gone from the scan are forgotten."""
        seen_now: dict[str, _DocumentHistory] = {}
        for doc in documents:
            key = content_key(doc)
            seen = self._documents.get(doc.path)
            if seen is None:
                seen = _DocumentHistory(key, now, min(now, doc.mtime_ns / 1e9), 0)
            elif seen.key != key:
                seen = _DocumentHistory(key, seen.first_seen, now, seen.edits + 1)
                self._pattern = self._pattern.after(doc.path)
            seen_now[doc.path] = seen
        self._documents = seen_now
        return self.doc_infos(documents, tokens)

    def doc_infos(self, documents: Iterable[Document], tokens: Mapping[str, int]) -> list[DocInfo]:
        """The planner's view of `documents` as last observed; any never observed are left out.
        A document's view is made again only when something it holds changed: a rescan after
        one save changes one of 10,000."""
        infos: list[DocInfo] = []
        made: dict[str, tuple[_DocumentHistory, DocInfo]] = {}
        pattern = self._pattern
        for doc in documents:
            seen = self._documents.get(doc.path)
            if seen is None:
                continue
            count = tokens[doc.path]
            weight = pattern.next_edit_weight(doc.path, seen.edits)
            before = self._infos.get(doc.path)
            if (
                before is not None
                and before[0] is seen
                and before[1].tokens == count
                and before[1].edit_weight == weight
            ):
                info = before[1]
            else:
                info = seen.info(doc.path, count, weight)
            made[doc.path] = (seen, info)
            infos.append(info)
        self._infos = made
        return infos

    # --- questions ---------------------------------------------------------------------

    def asked(self, shard: int, at: float) -> None:
        """A question on `shard` was sent at `at`."""
        times = self._asked.setdefault(shard, [])
        times.append(at)
        del times[: -(RECENT_GAPS + 1)]  # the policy weighs only the recent gaps
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
