"""Extractive, deterministic answers: the sentences that best match the question.

The emulator does not generate language. It quotes the best-matching sentences from the
request's system text and documents, scored with BM25 over sentences, and cites them with
`char_location` citations whose `cited_text` is exactly `data[start:end]`.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from .positions import Source

PREAMBLE = (
    "[offline emulator: an extractive answer, not written by Claude] "
    "The passages that best match the question are:"
)
NO_MATCH = (
    "[offline emulator: an extractive answer, not written by Claude] "
    "No passage in the provided text matches the question."
)
MAX_SENTENCES = 3

# A sentence ends at . ! ? before whitespace, at a blank line, or before a line that starts
# a Markdown structure (heading, list item, quote, table row); single newlines are wrapping.
_BOUNDARY = re.compile(
    r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n|\n(?=[ \t]*(?:#{1,6}\s|[*+-]\s|>|\||\d+[.)]\s))"
)
_TERM = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "our",
        "should",
        "that",
        "the",
        "their",
        "there",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)
_K1 = 1.2
_B = 0.75
_SHORT = 6  # terms


def _stem(term: str) -> str:
    """Just enough stemming for a question's words to meet the text's: plurals, -ing, -ed."""
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if term.endswith(suffix) and len(term) - len(suffix) >= 3 and not term.endswith("ss"):
            return term[: -len(suffix)] + keep
    return term


def terms(text: str) -> list[str]:
    return [_stem(t) for t in (m.lower() for m in _TERM.findall(text)) if t not in _STOPWORDS]


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    for boundary in _BOUNDARY.finditer(text):
        spans.append((start, boundary.start()))
        start = boundary.end()
    spans.append((start, len(text)))
    return spans


@dataclass(frozen=True)
class _SentenceIndex:
    spans: tuple[tuple[int, int], ...]
    lengths: np.ndarray  # terms per sentence
    postings: dict[str, tuple[np.ndarray, np.ndarray]]  # term -> (sentences, term counts)


def _index(text: str) -> _SentenceIndex:
    spans: list[tuple[int, int]] = []
    lengths: list[int] = []
    postings: dict[str, list[tuple[int, int]]] = {}
    for start, end in _sentence_spans(text):
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        words = terms(text[start:end])
        if not words:
            continue
        sentence = len(spans)
        spans.append((start, end))
        lengths.append(len(words))
        for term, tf in Counter(words).items():
            postings.setdefault(term, []).append((sentence, tf))
    arrays = {
        term: (
            np.array([p[0] for p in pairs], dtype=np.int64),
            np.array([p[1] for p in pairs], dtype=np.float64),
        )
        for term, pairs in postings.items()
    }
    return _SentenceIndex(tuple(spans), np.array(lengths, dtype=np.float64), arrays)


class _RecentIndexes:
    """The sentence indexes of the texts the last few requests carried. A client sends the
    same documents again and again, so each is indexed once; an index (about 11 times the
    size of its text) goes once no recent request carries its text, so the old versions of
    edited documents do not pile up."""

    def __init__(self, requests: int) -> None:
        self._requests = requests
        self._lock = threading.Lock()
        self._seen = 0
        self._by_text: dict[str, tuple[_SentenceIndex, int]] = {}

    def of(self, texts: list[str]) -> list[_SentenceIndex]:
        with self._lock:
            self._seen += 1
            seen = self._seen
            found = {t: self._by_text[t][0] for t in texts if t in self._by_text}
        built = {t: _index(t) for t in texts if t not in found}
        indexes = {**found, **built}
        with self._lock:
            self._by_text.update((t, (index, seen)) for t, index in indexes.items())
            if seen % self._requests == 0:
                oldest = seen - self._requests
                self._by_text = {t: e for t, e in self._by_text.items() if e[1] > oldest}
        return [indexes[t] for t in texts]


_RECENT = _RecentIndexes(requests=16)


@dataclass(frozen=True)
class Passage:
    source: Source
    start: int
    end: int
    score: float

    @property
    def text(self) -> str:
        return self.source.text[self.start : self.end]


def best_passages(question: str, sources: tuple[Source, ...], limit: int) -> list[Passage]:
    """BM25 over sentences, short sentences discounted; ties go to the earlier source and
    the earlier sentence, so the answer is deterministic."""
    query = sorted(set(terms(question)))
    if not query or limit <= 0:
        return []
    indexes = _RECENT.of([source.text for source in sources])
    total = sum(len(ix.spans) for ix in indexes)
    if total == 0:
        return []
    average = sum(float(ix.lengths.sum()) for ix in indexes) / total
    df = {t: sum(len(ix.postings[t][0]) for ix in indexes if t in ix.postings) for t in query}
    idf = {t: math.log(1 + (total - n + 0.5) / (n + 0.5)) for t, n in df.items() if n}
    scored: list[tuple[float, int, int, Passage]] = []
    for s, (source, ix) in enumerate(zip(sources, indexes, strict=True)):
        present = [t for t in query if t in ix.postings and t in idf]
        if not present:
            continue
        scores = np.zeros(len(ix.spans))
        for term in present:
            sentences, tf = ix.postings[term]
            norm = _K1 * (1 - _B + _B * ix.lengths[sentences] / average)
            scores[sentences] += idf[term] * tf * (_K1 + 1) / (tf + norm)
        # A heading or a fragment says little on its own: short sentences weigh less.
        scores *= np.minimum(1.0, ix.lengths / _SHORT)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > limit:  # keep the best `limit`, and everything tied with the last
            cutoff = np.partition(scores[hits], len(hits) - limit)[len(hits) - limit]
            hits = hits[scores[hits] >= cutoff]
        for sentence in hits.tolist():
            start, end = ix.spans[sentence]
            score = float(scores[sentence])
            scored.append((-score, s, start, Passage(source, start, end, score)))
    scored.sort(key=lambda item: item[:3])
    return [item[3] for item in scored[:limit]]


def citation(passage: Passage) -> dict[str, Any]:
    return {
        "type": "char_location",
        "cited_text": passage.text,
        "document_index": passage.source.document_index,
        "document_title": passage.source.title,
        "start_char_index": passage.start,
        "end_char_index": passage.end,
    }


def current_sources(sources: tuple[Source, ...]) -> tuple[Source, ...]:
    """Of documents sharing a title, the last: a model told that a later copy replaces an
    earlier one reads only the later one (corpus-cache keeps edited files' old copies in a
    cached prefix and says so in its instructions)."""
    last = {source.title: source.document_index for source in sources if source.title}
    return tuple(s for s in sources if not s.title or last[s.title] == s.document_index)


def answer_blocks(question: str, sources: tuple[Source, ...]) -> list[dict[str, Any]]:
    """The content blocks of an extractive answer, before any max_tokens cut."""
    passages = best_passages(question, current_sources(sources), MAX_SENTENCES)
    if not passages:
        return [{"type": "text", "text": NO_MATCH}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": PREAMBLE + "\n"}]
    for passage in passages:
        block: dict[str, Any] = {"type": "text", "text": passage.text + "\n"}
        if passage.source.citable:
            block["citations"] = [citation(passage)]
        blocks.append(block)
    return blocks
