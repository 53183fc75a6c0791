"""Issue 15, class 6: the daily cap has no side doors, and its estimates are bounds.

Every request that spends (ask, warm, prewarm, keep-warm) passes the cap before it is
sent; one refused is not sent, and a warm of any kind is logged and recorded as
"refused". The estimate is the most the request can cost, from the counted tokens: the
emulator never bills more, for cold, warm, conversation or fan-out questions, whatever
the text of the question or the corpus."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from corpus_cache.engine.warm import keep_warm_due, next_ping_at, prewarm_after_changes
from corpus_cache.errors import BudgetExceededError
from corpus_cache.mcp_surface.server import build_server
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on
from test_holding import settled_engine

TINY_CAP = 0.0005  # less than any request on the test corpus costs


def _sent(emulator: Control) -> int:
    return sum(1 for e in emulator.log() if e["path"] == "/v1/messages")


def _rows(engine: Any) -> list[dict[str, Any]]:
    return list(reversed(engine.ledger.requests(engine.corpus_key)))


@pytest.mark.anyio
async def test_refresh_with_warm_under_the_cap_sends_nothing_and_records_the_refusal(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with (
        engine_on(
            corpus, running_emulator.base_url, tmp_path / "s", max_usd_per_day=TINY_CAP
        ) as engine,
        Client(build_server(engine)) as mcp,  # type: ignore[arg-type]
    ):
        for _ in range(10):
            result = await mcp.call_tool("refresh", {"warm": True})
            out = result.structured_content
            assert out is not None
            assert out["warmed"] == []
            assert "--max-usd-per-day" in out["warm_note"]
        refused = await mcp.call_tool("ask", {"question": "Who is on call?"})
        assert refused.is_error
        rows = _rows(engine)
        spent = engine.totals().cost_usd
    assert _sent(emulator) == 0
    assert [(r.kind, r.outcome, r.cost_usd) for r in rows] == [("warm", "refused", 0)] * 10
    assert spent == 0


@pytest.mark.anyio
async def test_saves_with_prewarm_under_the_cap_send_nothing(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "s", prewarm=True,
        max_usd_per_day=TINY_CAP, watch=False,
    ) as engine:  # fmt: skip
        prewarm_after_changes(engine)
        for i in range(6):
            with (corpus / "oncall.md").open("a") as f:
                f.write(f"\nSave number {i}.\n")
            await engine.refresh()  # what the watcher does after a save: serving goes on
        rows = _rows(engine)
    assert _sent(emulator) == 0
    assert [(r.kind, r.outcome) for r in rows] == [("warm", "refused")] * 6


@pytest.mark.anyio
async def test_a_keep_warm_request_the_cap_refuses_is_recorded_and_not_sent(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    async with settled_engine(tmp_path, running_emulator, emulator, ttl="1h") as (
        engine, clock, _,
    ):  # fmt: skip
        await engine.ask("When are deploys frozen?")
        engine.settings.max_usd_per_day = engine.totals().cost_usd + TINY_CAP
        due = next_ping_at(engine)
        assert due is not None
        clock.until(due)
        sent = _sent(emulator)
        with pytest.raises(BudgetExceededError):
            await keep_warm_due(engine)
        rows = _rows(engine)
    assert _sent(emulator) == sent
    assert (rows[-1].kind, rows[-1].outcome) == ("keep-warm", "refused")


@pytest.mark.anyio
async def test_asks_and_warms_together_never_take_the_days_spend_over_the_cap(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    cap = 0.25
    async with (
        engine_on(corpus, running_emulator.base_url, tmp_path / "s", max_usd_per_day=cap) as engine,
        Client(build_server(engine)) as mcp,  # type: ignore[arg-type]
    ):
        for i in range(40):
            (corpus / "oncall.md").write_text(f"# On call\n\nRotation {i}: " + "?!" * 400 + "\n")
            await mcp.call_tool("refresh", {"warm": True})
            await mcp.call_tool("ask", {"question": "Who is on call? " + "(!) " * 300})
        spent = engine.totals().cost_usd
    assert 0 < spent <= cap


# --- the bound: never below what the emulator bills -----------------------------------

WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40)
PUNCTUATION = st.text(alphabet="?!.,;:()[]{}<>/\\|@#$%^&*-_=+~`'\"", min_size=1, max_size=400)
QUESTION = st.one_of(WORDS, PUNCTUATION, st.lists(WORDS | PUNCTUATION, max_size=30).map(" ".join))
QUESTION = QUESTION.filter(lambda q: bool(q.strip()))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    questions=st.lists(QUESTION, min_size=3, max_size=3),
    filler=st.integers(10, 80),
    extra=st.lists(PUNCTUATION | WORDS, max_size=4),
    budget=st.sampled_from([None, 6_000]),
)
def test_the_estimate_is_never_below_what_the_emulator_bills(
    running_emulator: Any, questions: list[str], filler: int, extra: list[str], budget: int | None
) -> None:
    async def run(root: Path) -> None:
        corpus = write_corpus(root / "corpus", filler_sentences=filler)
        for i, text in enumerate(extra):
            (corpus / f"extra-{i}.md").write_text(text + "\n" + "?" * 50 * i)
        options: dict[str, Any] = {"max_usd_per_day": 1_000.0}
        if budget is not None:
            options["budget_tokens"] = budget
        async with engine_on(corpus, running_emulator.base_url, root / "s", **options) as engine:
            fan_out = min(2, len(engine.current.shards))
            cold = await engine.ask(questions[0], fan_out=fan_out)
            warm = await engine.ask(questions[0], fan_out=fan_out)
            first = await engine.ask(questions[1], session="new")
            follow = await engine.ask(questions[2], session=first.session)
            again = await engine.ask(questions[0], session=first.session)
        for answer in (cold, warm, first, follow, again):
            assert answer.cost_usd > 0
            assert answer.estimated_usd >= answer.cost_usd, answer

    with tempfile.TemporaryDirectory() as root:
        anyio.run(run, Path(root))


@pytest.mark.anyio
async def test_a_question_of_punctuation_is_estimated_at_no_less_than_it_costs(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    question = "Which of these is on call? " + "?!" * 20_000
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine:
        answer = await engine.ask(question)
    assert answer.estimated_usd >= answer.cost_usd
