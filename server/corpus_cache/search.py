"""Local BM25 search over passages of the corpus. Costs nothing: no API call.

An index belongs to one snapshot but is built on its first search, not when the snapshot
is swapped in, so a save goes live without waiting for a rebuild nobody asked for. The
token ids of each document's passages are kept by content across snapshots (one
vocabulary per process), so the rebuild after an edit tokenizes only what changed.
"""

from __future__ import annotations

import logging
import re
import threading
from array import array
from dataclasses import dataclass, field

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from .corpus.documents import Document, Snapshot

PASSAGE_LINES = 12  # a passage is a window of lines, so a hit can say where it is

_WORDS = re.compile(r"(?u)\b\w\w+\b")  # bm25s's default tokenizer, kept here so ids persist
_STOPWORDS = frozenset(STOPWORDS_EN)

# bm25s sets its logger to DEBUG: every index built would say so in the server's log.
logging.getLogger("bm25s").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Passage:
    doc: Document = field(repr=False)
    start_line: int
    end_line: int

    @property
    def path(self) -> str:
        return self.doc.path

    @property
    def text(self) -> str:
        return self.doc.lines(self.start_line, self.end_line)


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float


def _spans(doc: Document) -> list[tuple[int, int]]:
    count = doc.line_count
    spans = []
    for start in range(1, count + 1, PASSAGE_LINES):
        end = min(count, start + PASSAGE_LINES - 1)
        if doc.lines(start, end).strip():
            spans.append((start, end))
    return spans


class _Tokens:
    """Word ids, and each document's passages as word ids, by (path, content hash)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.vocabulary: dict[str, int] = {}
        self._documents: dict[tuple[str, str], list[tuple[int, int, array[int]]]] = {}

    def ids(self, text: str, *, add: bool) -> list[int]:
        words = (w for w in _WORDS.findall(text.lower()) if w not in _STOPWORDS)
        vocabulary = self.vocabulary
        if add:
            return [vocabulary.setdefault(w, len(vocabulary)) for w in words]
        return [vocabulary[w] for w in words if w in vocabulary]

    def passages(self, snapshot: Snapshot) -> tuple[list[Passage], list[array[int]]]:
        """The snapshot's passages and their ids. Keeps only this snapshot's documents:
        memory follows the live corpus, not every version ever seen; 4 bytes a word."""
        with self._lock:
            kept: dict[tuple[str, str], list[tuple[int, int, array[int]]]] = {}
            passages: list[Passage] = []
            ids: list[array[int]] = []
            for doc in snapshot.documents:
                key = (doc.path, doc.sha256)
                spans = self._documents.get(key)
                if spans is None:
                    spans = [
                        (
                            start,
                            end,
                            array("I", self.ids(f"{doc.path}\n{doc.lines(start, end)}", add=True)),
                        )
                        for start, end in _spans(doc)
                    ]
                kept[key] = spans
                for start, end, words in spans:
                    passages.append(Passage(doc, start, end))
                    ids.append(words)
            self._documents = kept
            return passages, ids


_TOKENS = _Tokens()


class SearchIndex:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._built = False
        self.passages: list[Passage] = []
        self._retriever: bm25s.BM25 | None = None

    def _build(self) -> None:
        with self._lock:
            if self._built:
                return
            self.passages, ids = _TOKENS.passages(self._snapshot)
            if any(ids):  # not when no passage has a word: bm25s would divide by zero
                retriever = bm25s.BM25()
                retriever.index((ids, dict(_TOKENS.vocabulary)), show_progress=False)
                self._retriever = retriever
            self._built = True

    def search(self, query: str, limit: int) -> list[Hit]:
        if not query.strip() or limit <= 0:
            return []
        self._build()
        query_ids = _TOKENS.ids(query, add=False)
        if self._retriever is None or not query_ids:
            return []
        k = min(limit, len(self.passages))
        indices, scores = self._retriever.retrieve([query_ids], k=k, show_progress=False)
        hits = []
        for index, score in zip(np.asarray(indices)[0], np.asarray(scores)[0], strict=True):
            if score > 0:
                hits.append(Hit(self.passages[int(index)], float(score)))
        return hits
