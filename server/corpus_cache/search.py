"""Local BM25 search over passages of the corpus. Costs nothing: no API call."""

from __future__ import annotations

from dataclasses import dataclass

import bm25s
import numpy as np

from .corpus.documents import Snapshot

PASSAGE_LINES = 12  # a passage is a window of lines, so a hit can say where it is


@dataclass(frozen=True)
class Passage:
    path: str
    start_line: int
    end_line: int
    text: str


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float


def _passages(snapshot: Snapshot) -> list[Passage]:
    passages: list[Passage] = []
    for doc in snapshot.documents:
        count = doc.line_count
        for start in range(1, count + 1, PASSAGE_LINES):
            end = min(count, start + PASSAGE_LINES - 1)
            text = doc.lines(start, end)
            if text.strip():
                passages.append(Passage(doc.path, start, end, text))
    return passages


class SearchIndex:
    def __init__(self, snapshot: Snapshot) -> None:
        self.passages = _passages(snapshot)
        self._retriever: bm25s.BM25 | None = None
        if self.passages:
            corpus = [f"{p.path}\n{p.text}" for p in self.passages]
            tokens = bm25s.tokenize(corpus, stopwords="en", show_progress=False)
            self._retriever = bm25s.BM25()
            self._retriever.index(tokens, show_progress=False)

    def search(self, query: str, limit: int) -> list[Hit]:
        if self._retriever is None or not query.strip() or limit <= 0:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not any(len(ids) for ids in tokens.ids):
            return []
        k = min(limit, len(self.passages))
        indices, scores = self._retriever.retrieve(tokens, k=k, show_progress=False)
        hits = []
        for index, score in zip(np.asarray(indices)[0], np.asarray(scores)[0], strict=True):
            if score > 0:
                hits.append(Hit(self.passages[int(index)], float(score)))
        return hits
