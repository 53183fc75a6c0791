"""Local BM25 search over passages of the corpus. Costs nothing: no API call.

An index belongs to one snapshot but is built on its first search, not when the snapshot
is swapped in, so a save goes live without waiting for a rebuild nobody asked for. Each
document's passages are kept as bags of word ids by content across snapshots (one
vocabulary per process), so the rebuild after an edit tokenizes only what changed.

The scoring is BM25 in Lucene's variant (k1 1.5, b 0.75), as bm25s computes it. It is
done here with numpy because bm25s's index build, counting each passage in Python, raised
the peak memory of a 50 MB corpus by 100 MB; a bag keeps each distinct word of a passage
once, with its count, which is a seventh of the words on English text.
"""

from __future__ import annotations

import re
import threading
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from corpus_cache.corpus.documents import Document, Snapshot

PASSAGE_LINES = 12  # a passage is a window of lines, so a hit can say where it is
K1, B = 1.5, 0.75

_WORDS = re.compile(r"(?u)\b\w\w+\b")  # words of two characters or more
# Lucene's English stop words, as bm25s has them.
_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True)
class _Bags:
    """A document's passages as bags of words: passage i spans lines starts[i]..ends[i]
    and holds the distinct word ids terms[offsets[i]:offsets[i + 1]], each counts[j] times.
    Flat arrays, a few per document, so that 100,000 passages are not 100,000 objects."""

    starts: array[int]
    ends: array[int]
    offsets: array[int]
    terms: array[int]
    counts: array[int]


class _Vocabulary:
    """Word ids, and each document's passages as bags of ids, by (path, content hash)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids: dict[str, int] = {}
        self._documents: dict[tuple[str, str], _Bags] = {}

    def query(self, text: str) -> list[int]:
        """The ids of a query's known words, repeated as often as the query repeats them."""
        return [self.ids[w] for w in _words(text) if w in self.ids]

    def _bags(self, doc: Document) -> _Bags:
        ids = self.ids
        bags = _Bags(array("I"), array("I"), array("I", [0]), array("I"), array("I"))
        for start, end in _spans(doc):
            counted = Counter(_words(f"{doc.path}\n{doc.lines(start, end)}"))
            bags.starts.append(start)
            bags.ends.append(end)
            bags.terms.extend(ids.setdefault(w, len(ids)) for w in counted)
            bags.counts.extend(counted.values())
            bags.offsets.append(len(bags.terms))
        return bags

    def passages(self, snapshot: Snapshot) -> tuple[list[Passage], list[_Bags]]:
        """The snapshot's passages and each document's bags. Keeps only this snapshot's
        documents: memory follows the live corpus, not every version ever seen."""
        with self._lock:
            kept: dict[tuple[str, str], _Bags] = {}
            passages: list[Passage] = []
            for doc in snapshot.documents:
                key = (doc.path, doc.sha256)
                bags = self._documents.get(key) or self._bags(doc)
                kept[key] = bags
                spans = zip(bags.starts, bags.ends, strict=True)
                passages.extend(Passage(doc, start, end) for start, end in spans)
            self._documents = kept
            return passages, list(kept.values())


def _words(text: str) -> list[str]:
    return [w for w in _WORDS.findall(text.lower()) if w not in _STOPWORDS]


_VOCABULARY = _Vocabulary()


@dataclass(frozen=True)
class _Scores:
    """BM25 scores by word: the passages holding word t are passages[indptr[t]:indptr[t+1]],
    with scores[indptr[t]:indptr[t+1]]."""

    indptr: npt.NDArray[np.int64]
    passages: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]


def _score(bags: list[_Bags], words: int) -> _Scores | None:
    """The BM25 scores of every word in every passage; None if no passage has a word.
    Computed in place where it can be: the temporaries are the peak memory of a search."""
    sizes = [np.diff(np.frombuffer(b.offsets, dtype=np.uint32)) for b in bags]
    distinct: npt.NDArray[np.int64] = (
        np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, dtype=np.int64)
    )
    if not distinct.any():
        return None
    count = len(distinct)
    passage = np.repeat(np.arange(count, dtype=np.int32), distinct)
    tf = np.concatenate([np.frombuffer(b.counts, dtype=np.uint32) for b in bags]).astype(np.float32)
    length = np.bincount(passage, weights=tf, minlength=count).astype(np.float32)
    norm = K1 * ((1 - B) + B * length / length.mean())
    denominator = norm[passage]
    denominator += tf
    terms = np.concatenate([np.frombuffer(b.terms, dtype=np.uint32) for b in bags])
    frequency = np.bincount(terms, minlength=words)
    idf = np.log1p((count - frequency + 0.5) / (frequency + 0.5)).astype(np.float32)
    tf *= idf[terms]
    tf /= denominator
    del denominator
    order = np.argsort(terms, kind="stable")
    del terms
    indptr = np.zeros(words + 1, dtype=np.int64)
    np.cumsum(frequency, out=indptr[1:])
    return _Scores(indptr, passage[order], tf[order])


class SearchIndex:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._built = False
        self.passages: list[Passage] = []
        self._scores: _Scores | None = None

    def _build(self) -> None:
        with self._lock:
            if self._built:
                return
            self.passages, bags = _VOCABULARY.passages(self._snapshot)
            self._scores = _score(bags, len(_VOCABULARY.ids))
            self._built = True

    def search(self, query: str, limit: int) -> list[Hit]:
        if not query.strip() or limit <= 0:
            return []
        self._build()
        index = self._scores
        query_ids = _VOCABULARY.query(query)
        if index is None or not query_ids:
            return []
        total = np.zeros(len(self.passages), dtype=np.float32)
        words = len(index.indptr) - 1
        for word in query_ids:
            if word < words:  # a word first seen after this index was built is in none
                start, end = index.indptr[word], index.indptr[word + 1]
                total[index.passages[start:end]] += index.scores[start:end]
        found = np.flatnonzero(total > 0)
        if len(found) > limit:  # the passages scoring at least the limit-th best score
            kth = np.partition(total[found], len(found) - limit)[len(found) - limit]
            found = found[total[found] >= kth]
        found = found[np.lexsort((found, -total[found]))][:limit]  # by score, then in order
        return [Hit(self.passages[int(i)], float(total[i])) for i in found]
