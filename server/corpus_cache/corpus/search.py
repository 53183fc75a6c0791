"""Local BM25 search over passages of the corpus. Costs nothing: no API call.

An index belongs to one snapshot but is built on its first search, not when the snapshot
is swapped in, so a save goes live without waiting for a rebuild nobody asked for. Each
document's passages are kept as bags of word ids by content across snapshots (one
vocabulary per process), so the rebuild after an edit tokenizes only what changed.

The scoring is BM25 in Lucene's variant (k1 1.5, b 0.75), as bm25s computes it. It is
done here with numpy because bm25s's index build, counting each passage in Python, raised
the peak memory of a 50 MB corpus by 100 MB; a bag keeps each distinct word of a passage
once, with its count, which is a seventh of the words on English text.

Two things beyond plain BM25, measured on real documentation (bench/routing.py --folder,
docs/caching.md "Shards and routing"): a section heading's words count twice, since a
heading says what the text below it is about; and a query's question words ("how", "what",
"does", "about": NLTK's English stop words) are left out of the query, where they match
prose everywhere. Each document is also scored as one unit (BM25 over the whole document,
with its own length normalisation), so that routing can tell a passage of a document about
the question from a passage that mentions the same words in passing. A document's bag is
not kept: it is the sum of its passages' (each holds the path's words, which it holds
once), derived a few documents at a time when the index is built.
"""

from __future__ import annotations

import re
import threading
from array import array
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from corpus_cache.corpus.documents import Document, Snapshot

PASSAGE_LINES = 12  # a passage is a window of lines, so a hit can say where it is
K1, B = 1.5, 0.75
HEADING_COUNT = 2  # times a heading's words count

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


# NLTK's English stop words (nltk.corpus.stopwords, the 179 of its "english" list) less
# Lucene's above, in their forms of two letters or more without an apostrophe. Copied, not
# imported: nltk ships the list as data to download at run time.
_QUESTION_WORDS = _STOPWORDS | frozenset(
    "me my myself we our ours ourselves you your yours yourself yourselves he him his himself "
    "she her hers herself its itself them theirs themselves what which who whom those am were "
    "been being have has had having do does did doing because until while about against "
    "between through during before after above below from up down out off over under again "
    "further once here when where why how all any both each few more most other some nor only "
    "own same so than too very can just don should now ll re ve ain aren couldn didn doesn "
    "hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won wouldn".split()
)
_UNDERLINE = re.compile(r"([=\-~^\"'`#*+])\1{2,}\s*")
_MARKS = frozenset("=-~^\"'`#*+")  # the characters a heading's marking line starts with
_MARKDOWN_HEADING = re.compile(r"#{1,6} ")
_FENCE = re.compile(r"(```|~~~)")


def heading_lines(lines: list[str]) -> set[int]:
    """The (0-based) lines that are section headings: reStructuredText's and Markdown's
    underlined titles (the underline at least as long), and Markdown's `#` lines outside
    fenced code."""
    found = set()
    fenced = False
    for i, line in enumerate(lines):
        if line[:1] not in _MARKS:  # most lines: nothing here can be a heading's
            continue
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and _MARKDOWN_HEADING.match(line):
            found.add(i)
        if i and _UNDERLINE.fullmatch(line):
            title = lines[i - 1].strip()
            above = lines[i - 1]
            if title and not _UNDERLINE.fullmatch(above) and len(line.strip()) >= len(title):
                found.add(i - 1)
    return found


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
    Flat arrays, a few per document, so that 100,000 passages are not 100,000 objects.
    Each passage's bag holds the path's words too (`path`, once each in the whole
    document's bag, which is derived from these when the index is built, not kept)."""

    starts: array[int]
    ends: array[int]
    offsets: array[int]
    terms: array[int]
    counts: array[int]
    path: array[int]


class _Vocabulary:
    """Word ids, and each document's passages as bags of ids, by (path, content hash)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ids: dict[str, int] = {}
        self._documents: dict[tuple[str, str], _Bags] = {}

    def query(self, text: str) -> list[int]:
        """The ids of a query's known words, repeated as often as the query repeats them;
        without its question words, unless it is nothing else."""
        words = _words(text)
        topical = [w for w in words if w not in _QUESTION_WORDS] or words
        return [self.ids[w] for w in topical if w in self.ids]

    def _bags(self, doc: Document) -> _Bags:
        ids = self.ids
        bags = _Bags(*(array("I") for _ in range(6)))
        bags.offsets.append(0)
        lines = doc.text.split("\n")
        headings = sorted(heading_lines(lines))
        extra = HEADING_COUNT - 1
        path = _words(doc.path)
        bags.path.extend(ids.setdefault(w, len(ids)) for w in path)
        for start, end in _spans(doc):
            words = _words(doc.lines(start, end))
            for i in headings[bisect_left(headings, start - 1) : bisect_left(headings, end)]:
                words += _words(lines[i]) * extra
            counted = Counter(words + path)
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
    """BM25 scores by word: the units (passages, or documents) holding word t are
    units[indptr[t]:indptr[t+1]], with scores[indptr[t]:indptr[t+1]]."""

    indptr: npt.NDArray[np.int64]
    units: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]

    def total(self, query_ids: list[int], count: int) -> npt.NDArray[np.float32]:
        """Each of the `count` units' score for the query: the sum of its words' scores."""
        total = np.zeros(count, dtype=np.float32)
        words = len(self.indptr) - 1
        for word in query_ids:
            if word < words:  # a word first seen after this index was built is in none
                start, end = self.indptr[word], self.indptr[word + 1]
                total[self.units[start:end]] += self.scores[start:end]
        return total


def _score(
    distinct: npt.NDArray[np.int64],
    terms: list[npt.NDArray[np.uint32]],
    counts: list[npt.NDArray[np.uint32]],
    words: int,
) -> _Scores | None:
    """The BM25 scores of every word in every unit, unit i holding the distinct[i] words
    that come next in the concatenated `terms`, each `counts` times; None if no unit has a
    word. The lists are emptied: the joined arrays and the temporaries, each freed as soon
    as it is used, are the peak memory of a search (a document's bag kept besides its
    passages', and the joined words held to the end, had raised it by a tenth)."""
    if not distinct.any():
        return None
    count = len(distinct)
    unit = np.repeat(np.arange(count, dtype=np.int32), distinct)
    tf = np.concatenate(counts, dtype=np.float32)
    counts.clear()
    # Each unit's length, summed over its run of entries (bincount would cast every entry
    # to float64 and int64 first: four times tf's memory, the peak of the whole build).
    length = np.zeros(count, dtype=np.float32)
    held = distinct > 0
    starts = np.cumsum(distinct) - distinct
    length[held] = np.add.reduceat(tf, starts[held])
    norm = K1 * ((1 - B) + B * length / length.mean())
    denominator = norm[unit]
    del unit  # cheaper to repeat again at the end than to hold through the sort
    denominator += tf
    tf /= denominator
    del denominator
    joined = np.concatenate(terms)
    terms.clear()
    frequency = np.bincount(joined, minlength=words)
    idf = np.log1p((count - frequency + 0.5) / (frequency + 0.5)).astype(np.float32)
    tf *= idf[joined]
    wide = np.argsort(joined, kind="stable")
    del joined
    order = wide.astype(np.int32)  # half the size of argsort's int64, for what follows
    del wide
    scores = tf[order]
    del tf
    indptr = np.zeros(words + 1, dtype=np.int64)
    np.cumsum(frequency, out=indptr[1:])
    units = np.repeat(np.arange(count, dtype=np.int32), distinct)[order]
    return _Scores(indptr, units, scores)


def _arrays(parts: list[array[int]]) -> list[npt.NDArray[np.uint32]]:
    return [np.frombuffer(p, dtype=np.uint32) for p in parts] or [np.zeros(0, np.uint32)]


def _passage_scores(bags: list[_Bags], words: int) -> _Scores | None:
    sizes = [np.diff(np.frombuffer(b.offsets, dtype=np.uint32)) for b in bags]
    distinct = np.concatenate(sizes).astype(np.int64) if sizes else np.zeros(0, dtype=np.int64)
    return _score(
        distinct, _arrays([b.terms for b in bags]), _arrays([b.counts for b in bags]), words
    )


WORDS_AT_ONCE = 1 << 14  # passages' words whose documents' bags are derived together


def _whole(
    bags: list[_Bags], words: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """The bags of `bags`' documents as wholes (the sum of their passages', the path's
    words once): how many distinct words each holds, their ids (ascending in each) and
    their counts."""
    terms = np.concatenate([np.frombuffer(b.terms, dtype=np.uint32) for b in bags])
    counts = np.concatenate([np.frombuffer(b.counts, dtype=np.uint32) for b in bags])
    document = np.repeat(np.arange(len(bags), dtype=np.int64), [len(b.terms) for b in bags])
    keys, where = np.unique(document * words + terms, return_inverse=True)
    summed = np.bincount(where, weights=counts, minlength=len(keys))
    for i, bag in enumerate(bags):  # every passage's bag holds the path: once is the whole's
        if len(bag.starts) > 1 and bag.path:
            path, times = np.unique(np.frombuffer(bag.path, dtype=np.uint32), return_counts=True)
            summed[np.searchsorted(keys, i * words + path.astype(np.int64))] -= times * (
                len(bag.starts) - 1
            )
    distinct = np.bincount(keys // words, minlength=len(bags))
    return distinct, (keys % words).astype(np.uint32), summed.astype(np.uint32)


def _document_scores(bags: list[_Bags], words: int) -> _Scores | None:
    """The documents (those with a passage) as units, in the order of `bags`."""
    whole = [b for b in bags if b.starts]
    terms: list[npt.NDArray[np.uint32]] = []
    counts: list[npt.NDArray[np.uint32]] = []
    distinct: list[npt.NDArray[np.int64]] = []
    first = held = 0
    for i, bag in enumerate(whole):  # a few documents at a time: bounded temporaries
        held += len(bag.terms)
        if held >= WORDS_AT_ONCE or i == len(whole) - 1:
            some, found, times = _whole(whole[first : i + 1], words)
            distinct.append(some)
            terms.append(found)
            counts.append(times)
            first, held = i + 1, 0
    if not distinct:
        return None
    return _score(np.concatenate(distinct), terms, counts, words)


class SearchIndex:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._built = False
        self.passages: list[Passage] = []
        self._scores: _Scores | None = None
        self._documents: _Scores | None = None
        self._document_of = np.zeros(0, dtype=np.int32)  # a passage's document, as a unit

    def _build(self) -> None:
        with self._lock:
            if self._built:
                return
            self.passages, bags = _VOCABULARY.passages(self._snapshot)
            words = len(_VOCABULARY.ids)
            self._scores = _passage_scores(bags, words)
            self._documents = _document_scores(bags, words)
            per_document = [len(b.starts) for b in bags if b.starts]
            self._document_of = np.repeat(
                np.arange(len(per_document), dtype=np.int32), per_document
            )
            self._built = True

    def search(self, query: str, limit: int, document_weight: float = 0.0) -> list[Hit]:
        """The best `limit` passages for `query`, by their BM25 score, plus
        `document_weight` times their document's (the whole document scored as one unit)."""
        if not query.strip() or limit <= 0:
            return []
        self._build()
        index = self._scores
        query_ids = _VOCABULARY.query(query)
        if index is None or not query_ids:
            return []
        total = index.total(query_ids, len(self.passages))
        found = np.flatnonzero(total > 0)
        if document_weight and self._documents is not None:
            documents = self._documents.total(query_ids, int(self._document_of[-1]) + 1)
            total[found] += document_weight * documents[self._document_of[found]]
        if len(found) > limit:  # the passages scoring at least the limit-th best score
            kth = np.partition(total[found], len(found) - limit)[len(found) - limit]
            found = found[total[found] >= kth]
        found = found[np.lexsort((found, -total[found]))][:limit]  # by score, then in order
        return [Hit(self.passages[int(i)], float(total[i])) for i in found]
