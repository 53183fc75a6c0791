"""A corpus over the budget: shards, routing, fan-out, and the answer saying what it covered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.engine.core import Engine
from corpus_cache.models.catalog import ModelSpec
from corpus_cache.plan.route import (
    SUPPORT_WEIGHT,
    SUPPORTING_HITS,
    UNSURE,
    rank_shards,
    shard_evidence,
    unsure_shards,
)
from support.corpus_fixture import FACTS, write_corpus
from support.emulator_control import Control
from support.engines import engine_on

BUDGET = 700  # room for either document, not both

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(running_emulator: Any, emulator: Control, tmp_path: Path) -> AsyncIterator[Engine]:
    corpus = write_corpus(tmp_path / "corpus", filler_sentences=90)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", budget_tokens=4_500
    ) as engine:
        yield engine


async def test_a_corpus_over_the_budget_is_split_into_shards_that_fit(engine: Engine) -> None:
    corpus = engine.current
    assert len(corpus.shards) >= 2
    for shard in corpus.shards:
        assert shard.plan.total_tokens <= 4_500
    placed = sorted(p for s in corpus.shards for p in s.plan.order)
    assert placed == sorted(FACTS)


async def test_a_question_routes_to_the_shard_holding_its_answer(engine: Engine) -> None:
    shard_of = engine.current.layout.shard_of()
    answer = await engine.ask("Which port does the routing engine Kestrel listen on?")
    assert answer.shards == (shard_of["architecture/routing.md"],)
    assert any(c.path == "architecture/routing.md" for c in answer.citations)
    assert 0 < answer.corpus_share < 1
    assert answer.documents_not_consulted > 0


async def test_fan_out_asks_several_shards_in_parallel_and_merges(engine: Engine) -> None:
    answer = await engine.ask("When are deploys frozen and who is on call?", fan_out=2)
    assert len(answer.shards) == 2
    assert len(set(answer.shards)) == 2
    assert "From shard" in answer.text
    rows = engine.ledger.requests(engine.corpus_key)
    assert sorted(r.shard for r in rows) == sorted(answer.shards)


UNSURE_QUESTION = "Which weekday: the rotation hands over, or deploys are frozen?"


async def test_a_question_the_routing_is_unsure_of_asks_the_best_two_shards(
    engine: Engine,
) -> None:
    # Two shards of 4,500 tokens read far less than one shard of the window would.
    question = UNSURE_QUESTION
    shard_of = engine.current.layout.shard_of()
    assert shard_of["deploys.md"] != shard_of["oncall.md"]
    hits = engine.current.index.search(question, 50, document_weight=0.5)
    evidence = sorted(shard_evidence([(h.passage.path, h.score) for h in hits], shard_of).values())
    assert evidence[-2] >= UNSURE * evidence[-1]  # what makes the routing unsure
    answer = await engine.ask(question)
    assert len(set(answer.shards)) == 2
    assert "From shard" in answer.text
    asked_for_one = await engine.ask(question, fan_out=1)
    assert len(asked_for_one.shards) == 1


async def test_shards_of_the_window_are_asked_one_at_a_time_however_unsure(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    # A reserve that leaves a window of 1,000 tokens: any two shards read more than that.
    corpus = write_corpus(tmp_path / "corpus", filler_sentences=90)
    window = 1_000_000 - 1_000
    async with engine_on(
        corpus,
        running_emulator.base_url,
        tmp_path / "state",
        budget_tokens=4_500,
        reserve_tokens=window,
    ) as engine:
        assert engine.model.context_window == 1_000_000
        assert min(s.corpus_tokens for s in engine.current.shards) > 1_000
        answer = await engine.ask(UNSURE_QUESTION)
        assert len(answer.shards) == 1


async def test_each_shard_has_its_own_cached_prefix(engine: Engine) -> None:
    question = "Which port does the routing engine Kestrel listen on?"
    first = await engine.ask(question)
    again = await engine.ask(question)
    assert first.usage.cache_write_tokens > 0
    assert again.usage.cache_read_tokens == first.usage.cache_write_tokens


async def test_a_question_on_two_shards_holds_both_for_the_hour(engine: Engine) -> None:
    question = "When are deploys frozen and who is on call?"
    await engine.ask(question, fan_out=2)
    upgrade = await engine.ask(question, fan_out=2)  # each shard's 5-minute entry, upgraded
    assert upgrade.usage.cache_write_5m_tokens == 0
    assert 0 < upgrade.usage.cache_write_1h_tokens < 20
    # Both shards' markers are in the live corpus, though each shard added its own.
    assert set(engine.current.markers) == set(upgrade.shards)
    third = await engine.ask(question, fan_out=2)
    assert third.usage.cache_write_tokens == 0


MIDDLEWARE = """Middleware
==========

The middleware classes that come with the framework.

Cache middleware
----------------

Enables the site-wide cache: every page is kept for as long as the cache setting says.

Conditional GET middleware
--------------------------

Answers a request whose ETag or Last-Modified validators still match with 304 Not
Modified, and leaves the body out of responses to HEAD requests.

Locale middleware
-----------------

Selects the language of a request from its Accept-Language header or a cookie.
"""
CONDITIONAL = """Conditional view processing
===========================

A view can decide, from the request's validators, whether the response changed since
the client last fetched it. The ``condition`` decorator does it for GET requests and for
conditional requests of any method; the middleware does it for every view. A conditional
GET request carries If-None-Match or If-Modified-Since; a conditional request of another
method carries If-Match or If-Unmodified-Since.

Use the decorator when computing the ETag is cheap; use the middleware when the whole
response must be built anyway. GET and HEAD requests are answered with 304 when nothing
changed; other methods are answered with 412 when a precondition fails.
"""


async def test_a_question_on_a_section_heading_routes_to_the_shard_holding_that_section(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    # The heading's words are spread more densely over a document of the other shard.
    corpus = tmp_path / "corpus"
    (corpus / "ref").mkdir(parents=True)
    (corpus / "topics").mkdir()
    (corpus / "ref" / "middleware.md").write_text(MIDDLEWARE)
    (corpus / "topics" / "conditional.md").write_text(CONDITIONAL)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", budget_tokens=BUDGET
    ) as engine:
        shard_of = engine.current.layout.shard_of()
        assert shard_of["ref/middleware.md"] != shard_of["topics/conditional.md"]
        question = "What does the documentation say about Conditional GET middleware?"
        chosen = engine.route(question, engine.current, fan_out=1)
        assert [s.number for s in chosen] == [shard_of["ref/middleware.md"]]


# --- routing: pure ----------------------------------------------------------------------

STRONGER = 1 + SUPPORT_WEIGHT * SUPPORTING_HITS + 1e-6


@given(
    st.floats(0.5, 50),
    st.lists(st.floats(0.01, 1 / STRONGER), max_size=60),
    st.lists(st.floats(0.01, 1), max_size=10),
    st.booleans(),
)
def test_one_strong_match_beats_any_number_of_weak_ones(
    strong: float, weak: list[float], also: list[float], strong_first: bool
) -> None:
    hits = [("a.md", strong), *(("a.md", strong * w) for w in also)]
    others = [(f"b{i}.md", strong * w) for i, w in enumerate(weak)]
    ordered = hits + others if strong_first else others + hits
    shard_of = {path: 0 if path == "a.md" else 1 for path, _ in ordered}
    assert rank_shards(ordered, shard_of, [1, 0])[0] == 0


def test_between_equal_best_matches_the_better_supported_shard_wins() -> None:
    hits = [("a1.md", 2.0), ("b1.md", 2.0), ("b2.md", 1.0), ("a2.md", 0.5)]
    shard_of = {"a1.md": 0, "a2.md": 0, "b1.md": 1, "b2.md": 1}
    assert rank_shards(hits, shard_of, [0, 1, 2]) == [1, 0, 2]
    assert rank_shards([], shard_of, [2, 0, 1]) == [2, 0, 1]  # no evidence: as given


async def test_cache_status_on_shards_says_the_layout_once_in_plain_numbers(
    engine: Engine,
) -> None:
    from corpus_cache.mcp_surface.results import render_status, status

    text = render_status(status(engine))
    layout = next(line for line in text.splitlines() if line.startswith("Layout:"))
    shards = len(engine.current.shards)
    blocks = sum(len(s.plan.blocks) for s in engine.current.shards if s.plan.cached)
    assert layout.startswith(f"Layout: {shards} shards: {blocks} cached blocks in all")
    assert layout.count("every breakpoint") == 1
    assert "(s)" not in text


@given(
    st.lists(st.floats(0, 100), min_size=1, max_size=6),
    st.lists(st.integers(1, 1_000), min_size=6, max_size=6),
    st.integers(1, 2_000),
)
def test_the_runner_up_is_asked_too_only_when_close_and_both_read_less_than_the_window(
    scores: list[float], tokens: list[int], window: int
) -> None:
    evidence = dict(enumerate(scores))
    ranked = sorted(evidence, key=lambda s: -evidence[s])
    asked = unsure_shards(ranked, evidence, dict(enumerate(tokens)), window)
    assert asked[0] == ranked[0]
    close = len(ranked) > 1 and 0 < evidence[ranked[0]] <= evidence[ranked[1]] / UNSURE
    fits = len(ranked) > 1 and tokens[ranked[0]] + tokens[ranked[1]] <= window
    assert asked == (ranked[:2] if close and fits else ranked[:1])


def dear_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """The default model with reads dear enough that a warm question of $0.05 reads a few
    thousand tokens (a models file the engines of this test read)."""
    from corpus_cache.models.catalog import MODELS_FILE_ENV, load_catalog

    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nid = "claude-sonnet-5-5"\ninput_usd_per_mtok = 200.0\n')
    monkeypatch.setenv(MODELS_FILE_ENV, str(models))
    return load_catalog().get("claude-sonnet-5-5")


async def test_a_corpus_beyond_one_window_is_cut_by_the_default_price_one_within_it_is_not(
    running_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corpus_cache.plan.budget import price_budget

    corpus = write_corpus(tmp_path / "corpus", filler_sentences=90)
    model = dear_reads(tmp_path, monkeypatch)
    price = price_budget(model, 0.05)
    runs = iter(range(10))

    async def shard_sizes(**settings: Any) -> list[int]:
        state = tmp_path / f"state-{next(runs)}"
        async with engine_on(corpus, running_emulator.base_url, state, **settings) as engine:
            return [shard.plan.total_tokens for shard in engine.current.shards]

    (total,) = await shard_sizes()  # within the window: one shard, whatever the price
    assert total > 2 * price
    # A window three quarters of the corpus: beyond it, shards a $0.05 question reads.
    short = {"reserve_tokens": model.context_window - total * 3 // 4}
    by_price = await shard_sizes(**short)
    assert len(by_price) >= 3
    assert all(size <= price for size in by_price)
    by_window = await shard_sizes(**short, warm_question_usd=0)  # 0: not by price
    assert len(by_window) == 2


async def test_a_folder_that_grew_past_the_window_is_cut_as_a_fresh_start_cuts_it(
    running_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two windows on one folder, or a restart: one that planned the folder small must cut
    # it, once grown, into the shards another instance starting now cuts, or they share
    # no cache entry.
    full = write_corpus(tmp_path / "full", filler_sentences=90)
    model = dear_reads(tmp_path, monkeypatch)
    folder = tmp_path / "corpus"
    folder.mkdir()
    first, *rest = sorted(p for p in full.rglob("*.md"))
    (folder / first.name).write_text(first.read_text())
    url = running_emulator.base_url
    async with engine_on(full, url, tmp_path / "measure", warm_question_usd=0) as measuring:
        (total,) = [s.plan.total_tokens for s in measuring.current.shards]
    short = {"reserve_tokens": model.context_window - total * 3 // 4}
    async with engine_on(folder, url, tmp_path / "state", **short) as early:
        assert len(early.current.shards) == 1  # small: within the window
        for path in rest:
            (folder / f"{path.parent.name}-{path.name}").write_text(path.read_text())
        await early.refresh()
        grown = sorted(sorted(s.plan.order) for s in early.current.shards)
        async with engine_on(folder, url, tmp_path / "state", **short) as late:
            fresh = sorted(sorted(s.plan.order) for s in late.current.shards)
    assert len(grown) >= 3
    assert grown == fresh
