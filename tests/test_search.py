"""Local search: BM25 (Lucene's variant) over passages of 12 lines, by hand-worked scores."""

from __future__ import annotations

import itertools
import math
import random
import re
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.corpus.documents import Document, Snapshot
from corpus_cache.corpus.search import K1, PASSAGE_LINES, B, SearchIndex, heading_lines


def snapshot(texts: dict[str, str], version: int = 1) -> Snapshot:
    docs = tuple(
        Document.from_text(path, text, size=len(text), mtime_ns=0)
        for path, text in sorted(texts.items())
    )
    return Snapshot(Path("/corpus"), version, time.time(), docs, ())


def bm25(tf: int, df: int, passages: int, length: int, average: float) -> float:
    idf = math.log(1 + (passages - df + 0.5) / (df + 0.5))
    return idf * tf / (tf + K1 * (1 - B + B * length / average))


def test_a_passage_scores_the_sum_of_its_query_words_bm25() -> None:
    # Words of two letters or more per passage, the path's included, stop words left out:
    # a.md: md, kestrel, routes, kestrel (4); b.md: md, heron, books (3);
    # c.md: md, kestrel, books, freight (4).
    index = SearchIndex(
        snapshot(
            {
                "a.md": "Kestrel routes the kestrel.",
                "b.md": "Heron books it.",
                "c.md": "Kestrel books freight.",
            }
        )
    )
    average = (4 + 3 + 4) / 3
    hits = index.search("kestrel books", 10)
    scores = {h.passage.path: h.score for h in hits}
    assert scores["a.md"] == pytest.approx(bm25(2, 2, 3, 4, average), rel=1e-5)
    assert scores["b.md"] == pytest.approx(bm25(1, 2, 3, 3, average), rel=1e-5)
    assert scores["c.md"] == pytest.approx(2 * bm25(1, 2, 3, 4, average), rel=1e-5)
    assert [h.passage.path for h in hits] == ["c.md", "a.md", "b.md"]


def test_a_repeated_query_word_counts_each_time() -> None:
    index = SearchIndex(snapshot({"a.md": "alpha beta", "b.md": "gamma delta"}))
    once = index.search("alpha", 5)[0].score
    assert index.search("alpha alpha", 5)[0].score == pytest.approx(2 * once, rel=1e-5)


def test_equal_scores_come_in_corpus_order_and_nothing_scores_zero() -> None:
    texts = {f"d{i}.md": "same words here" for i in range(5)}
    texts["other.md"] = "nothing alike"
    hits = SearchIndex(snapshot(texts)).search("words", 3)
    assert [h.passage.path for h in hits] == ["d0.md", "d1.md", "d2.md"]
    assert SearchIndex(snapshot(texts)).search("absent", 3) == []


def test_words_first_seen_after_an_index_was_built_match_nothing_in_it() -> None:
    old = SearchIndex(snapshot({"a.md": "first version"}))
    assert old.search("version", 5)
    new = SearchIndex(snapshot({"a.md": "brand new zebra words"}, version=2))
    assert new.search("zebra", 5)
    assert old.search("zebra", 5) == []  # known to the vocabulary now, not to this index


def test_a_corpus_without_words_is_searched_without_error() -> None:
    index = SearchIndex(snapshot({"x.md": "... !!! ---", "y.md": "   "}))
    assert index.search("anything", 5) == []


def test_a_hit_says_which_lines_it_covers() -> None:
    text = "\n".join(f"line {n} filler" for n in range(1, 31)) + "\nthe needle is here\n"
    hits = SearchIndex(snapshot({"long.md": text})).search("needle", 5)
    assert [(h.passage.start_line, h.passage.end_line) for h in hits] == [(25, 31)]
    assert "needle" in hits[0].passage.text
    assert PASSAGE_LINES == 12


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([f"f{i}.md" for i in range(8)]),
        st.lists(st.sampled_from(["ant", "bee", "cat", "dog", "eel", "fox"]), max_size=30).map(
            " ".join
        ),
        min_size=1,
    ),
    st.lists(st.sampled_from(["ant", "bee", "cat", "yak"]), min_size=1, max_size=4),
    st.integers(1, 10),
)
def test_hits_are_the_best_scoring_passages_holding_a_query_word(
    texts: dict[str, str], query: list[str], limit: int
) -> None:
    index = SearchIndex(snapshot(texts))
    hits = index.search(" ".join(query), limit)
    everything = index.search(" ".join(query), 1_000)
    holding = {p for p, t in texts.items() if set(query) & set(t.split())}
    assert {h.passage.path for h in everything} == holding
    assert hits == everything[:limit]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_a_headings_words_count_twice() -> None:
    # x.md: md, kestrel (its heading's words twice), routing, notes (5 in all);
    # y.md: md, other, words, here (4).
    texts = {"x.md": "Kestrel\n=======\n\nrouting notes\n", "y.md": "other words here\n"}
    score = SearchIndex(snapshot(texts)).search("kestrel", 5)[0].score
    assert score == pytest.approx(bm25(2, 1, 2, 5, (5 + 4) / 2), rel=1e-5)


def test_section_headings_are_underlined_titles_and_markdown_hashes_outside_code() -> None:
    lines = [
        "=====",
        "Title",  # 1: overlined and underlined
        "=====",
        "",
        "Usage notes",  # 4
        "-----------",
        "Too long a title",
        "-----",  # an underline shorter than its title: a rule, not a heading
        "# Markdown heading",  # 8
        "```",
        "# a comment in code",
        "```",
        "## After the code",  # 12
        "#hashtag",
    ]
    assert heading_lines(lines) == {1, 4, 8, 12}


@given(
    st.text(alphabet="abc XYZ", min_size=1, max_size=20).filter(str.strip),
    st.sampled_from("=-~^*+#"),
    st.integers(-3, 3),
)
def test_a_title_is_a_heading_when_its_underline_is_at_least_as_long(
    title: str, mark: str, longer: int
) -> None:
    length = len(title.strip()) + longer
    underline = mark * length
    is_heading = length >= max(3, len(title.strip()))
    assert (0 in heading_lines([title, underline])) == is_heading


def test_a_querys_question_words_are_left_out_unless_it_has_nothing_else() -> None:
    texts = {
        "a.md": "How the kestrel routes work, and what it does.",
        "b.md": "Heron notes.",
        "c.md": "Where the heron goes.",
    }
    index = SearchIndex(snapshot(texts))
    asked = index.search("How does the kestrel work, and what about it?", 5)
    assert [(h.passage.path, h.score) for h in asked] == [
        (h.passage.path, h.score) for h in index.search("kestrel work", 5)
    ]
    assert [h.passage.path for h in index.search("how", 5)] == ["a.md"]


def test_a_passage_gains_the_document_weight_times_its_whole_documents_score() -> None:
    # a.md is two passages: lines 1-12 (md, kestrel, filler x 11: 13 words) and line 13
    # (md, kestrel, freight: 3); as one document md, kestrel x 2, filler x 11, freight (15).
    # b.md: md, heron, freight (3), as one passage and as one document.
    a = "kestrel\n" + "filler\n" * 11 + "kestrel freight\n"
    index = SearchIndex(snapshot({"a.md": a, "b.md": "heron freight\n"}))
    plain = {(h.passage.path, h.passage.start_line): h.score for h in index.search("kestrel", 5)}
    weighted = index.search("kestrel", 5, document_weight=0.5)
    document = bm25(2, 1, 2, 15, (15 + 3) / 2)
    assert {(h.passage.path, h.passage.start_line): h.score for h in weighted} == pytest.approx(
        {key: score + 0.5 * document for key, score in plain.items()}, rel=1e-5
    )
    assert plain[("a.md", 13)] == pytest.approx(bm25(1, 2, 3, 3, (13 + 3 + 3) / 3), rel=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([f"f{i}.md" for i in range(6)]),
        st.lists(st.sampled_from(["ant", "bee", "cat", "dog", "\n"]), max_size=60).map(" ".join),
        min_size=1,
    ),
    st.lists(st.sampled_from(["ant", "bee", "yak"]), min_size=1, max_size=3),
    st.floats(0.01, 2),
)
def test_the_document_weight_adds_to_matching_passages_and_finds_no_others(
    texts: dict[str, str], query: list[str], weight: float
) -> None:
    index = SearchIndex(snapshot(texts))
    plain = index.search(" ".join(query), 1_000)
    weighted = index.search(" ".join(query), 1_000, document_weight=weight)
    where = {(h.passage.path, h.passage.start_line): h.score for h in plain}
    assert {(h.passage.path, h.passage.start_line) for h in weighted} == set(where)
    assert all(h.score > where[(h.passage.path, h.passage.start_line)] for h in weighted)


def test_a_documents_score_counts_all_its_passages_words_and_its_paths_once() -> None:
    # Enough documents of several passages that their whole bags are derived in more than
    # one batch; each path repeats a word that its text uses too.
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(400)]
    texts = {
        f"w{i % 9}/w{i % 9}-{i}.md": "\n".join(
            " ".join(rng.choices(vocabulary, k=8)) for _ in range(rng.randint(1, 40))
        )
        for i in range(300)
    }
    words = {
        path: Counter([w for w in text.split()] + [w for w in re.findall(r"\w\w+", path.lower())])
        for path, text in texts.items()
    }
    average = sum(sum(c.values()) for c in words.values()) / len(words)
    index = SearchIndex(snapshot(texts))
    query = ["w3", "w77", "w5"]
    plain = {
        (h.passage.path, h.passage.start_line): h.score
        for h in index.search(" ".join(query), 10_000)
    }
    weighted = index.search(" ".join(query), 10_000, document_weight=1.0)
    assert len(weighted) == len(plain) > 300
    for hit in weighted:
        counted = words[hit.passage.path]
        whole = sum(
            bm25(
                counted[w],
                sum(w in c for c in words.values()),
                len(words),
                sum(counted.values()),
                average,
            )
            for w in query
            if counted[w]
        )
        assert hit.score - plain[(hit.passage.path, hit.passage.start_line)] == pytest.approx(
            whole, rel=1e-4, abs=1e-5
        )


def test_building_the_index_takes_at_most_twice_the_memory_it_keeps() -> None:
    # Word frequencies as in prose (Zipf), a few thousand passages; the documents' bags are
    # already known, as on a rebuild, so what is measured is the scoring's arrays.
    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    texts = {
        f"d{i:03d}.md": "\n".join(
            " ".join(rng.choices(vocabulary, weights, k=12)) for _ in range(120)
        )
        for i in range(150)
    }
    SearchIndex(snapshot(texts)).search("w1", 1)
    index = SearchIndex(snapshot(texts))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index.search("w1", 1)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kept = after - before
    assert kept > 1_000_000  # the index itself: its scores by word, for passages and documents
    assert peak - before <= 2 * kept
