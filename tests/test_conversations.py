"""Conversations (`ask(session=...)`), the daily budget cap, and cold-start coalescing,
against the emulator over loopback; the tool surface through a real MCP client in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from corpus_cache.api.request import NO_ANSWER, conversation_messages
from corpus_cache.cli.main import build_parser, settings_from_args
from corpus_cache.engine.sessions import Sessions, Turn, trim_turns
from corpus_cache.errors import ApiCallError, BudgetExceededError, InvalidArgumentError
from corpus_cache.mcp_surface.server import build_server
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on

pytestmark = pytest.mark.anyio


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def _messages(emulator: Control) -> list[dict[str, Any]]:
    return [e for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"]


def _content(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body["messages"][0]["content"]  # type: ignore[no-any-return]


# --- conversations: pure parts ---------------------------------------------------------


def test_the_conversation_follows_the_corpus_and_its_last_answer_carries_the_breakpoint() -> None:
    corpus = [{"type": "document", "title": "a.md"}]
    first = conversation_messages(corpus, [], "q1")
    assert first == [{"role": "user", "content": [*corpus, {"type": "text", "text": "q1"}]}]
    later = conversation_messages(corpus, [("q1", "a1"), ("q2", " ")], "q3")
    assert [m["role"] for m in later] == ["user", "assistant", "user", "assistant", "user"]
    assert later[0]["content"] == [*corpus, {"type": "text", "text": "q1"}]
    assert later[1]["content"] == [{"type": "text", "text": "a1"}]
    assert later[3]["content"] == [
        {"type": "text", "text": NO_ANSWER, "cache_control": {"type": "ephemeral"}}
    ]
    assert later[4]["content"] == [{"type": "text", "text": "q3"}]
    marks = [b for m in later for b in m["content"] if "cache_control" in b]
    assert len(marks) == 1


def test_trimming_keeps_the_newest_turns_within_both_bounds() -> None:
    turns = [Turn(f"q{i}", f"a{i}", 100) for i in range(5)]
    kept, dropped = trim_turns(turns, 10, max_turns=3, max_tokens=10_000)
    assert [t.question for t in kept] == ["q3", "q4"]
    assert dropped == 3
    kept, dropped = trim_turns(turns, 10, max_turns=20, max_tokens=150)
    assert [t.question for t in kept] == ["q4"]
    assert dropped == 4
    kept, dropped = trim_turns(turns, 10, max_turns=20, max_tokens=10_000)
    assert len(kept) == 5
    assert dropped == 0


def test_sessions_expire_when_idle_and_the_least_recently_used_is_evicted() -> None:
    now = [1000.0]
    sessions: Sessions[str] = Sessions(idle_seconds=60, max_sessions=2, clock=lambda: now[0])
    a = sessions.start("a", "pin-a")
    sessions.start("new", "pin-b")
    assert sessions.get("a") is a  # used: now the most recent
    sessions.start("c", "pin-c")  # evicts the generated one, not "a"
    assert len(sessions) == 2
    assert sessions.get("a") is a
    assert sessions.get("c") is not None
    now[0] += 61
    assert sessions.get("a") is None
    assert len(sessions) == 0
    with pytest.raises(InvalidArgumentError):
        Sessions.check_id("has space")


# --- conversations: through the server -------------------------------------------------


async def test_a_follow_up_sends_the_same_prefix_then_the_conversation_and_reads_it(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with (
        engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine,
        Client(build_server(engine)) as mcp,  # type: ignore[arg-type]
    ):
        first = await mcp.call_tool(
            "ask", {"question": "Which port does Kestrel listen on?", "session": "new"}
        )
        out1 = first.structured_content
        assert out1 is not None
        assert not first.is_error
        session = out1["session"]
        assert session
        assert out1["session_turns"] == 1
        follow = {"question": "When are deploys frozen?", "session": session}
        second = (await mcp.call_tool("ask", follow)).structured_content
        third = (
            await mcp.call_tool("ask", {"question": "Who is on call?", "session": session})
        ).structured_content
        plain = (await mcp.call_tool("ask", {"question": "Who is on call?"})).structured_content
    assert second is not None
    assert third is not None
    assert plain is not None
    assert second["session"] == session
    assert third["session_turns"] == 3
    assert plain["session"] is None
    assert "Session " in (first.content[0].text)  # type: ignore[union-attr]

    bodies = [e["body"] for e in _messages(emulator)]
    one, two, three = bodies[0], bodies[1], bodies[2]
    # The same corpus blocks with the same breakpoints, then the conversation.
    docs = [b for b in _content(one) if b["type"] == "document"]
    assert [b for b in _content(two) if b["type"] == "document"] == docs
    assert [b for b in _content(three) if b["type"] == "document"] == docs
    assert [m["role"] for m in two["messages"]] == ["user", "assistant", "user"]
    assert _content(two)[-1] == {"type": "text", "text": "Which port does Kestrel listen on?"}
    answer = two["messages"][1]["content"][0]
    assert answer["cache_control"] == {"type": "ephemeral"}
    assert "7443" in answer["text"]
    assert len(three["messages"]) == 5
    assert three["messages"][1]["content"][0] == {"type": "text", "text": answer["text"]}
    assert "cache_control" in three["messages"][3]["content"][0]
    assert "cache_control" not in three["messages"][1]["content"][0]

    # The second question reads the corpus and writes the conversation; the third reads both.
    prefix = out1["usage"]["cache_write_5m_tokens"] + out1["usage"]["cache_read_tokens"]
    assert second["usage"]["cache_read_tokens"] >= prefix
    assert second["usage"]["cache_write_5m_tokens"] > 0
    assert third["usage"]["cache_read_tokens"] > second["usage"]["cache_read_tokens"]


async def test_a_plain_question_marks_up_to_four_anchors_a_session_three_and_its_conversation(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    now = [1_800_000_000.0]
    emulator.freeze(now[0])
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "s", clock=lambda: now[0]
    ) as engine:
        assert len(engine.current.shards[0].plan.anchors) >= 4
        await engine.ask("Which port does Kestrel listen on?")
        now[0] += 7200  # every entry lapses: the session's first question writes them again
        emulator.advance(7200)
        first = await engine.ask("When are deploys frozen?", session="new")
        assert first.session is not None
        await engine.ask("Who is on call?", session=first.session)

    def breakpoints(body: dict[str, Any]) -> list[int]:
        return [sum("cache_control" in b for b in m["content"]) for m in body["messages"]]

    plain, session_first, follow_up = (e["body"] for e in _messages(emulator))
    assert breakpoints(plain) == [4]
    assert breakpoints(session_first) == [3]  # its follow-ups mark the same three
    assert breakpoints(follow_up) == [3, 1, 0]  # and the conversation so far the fourth


async def test_a_session_keeps_its_snapshot_and_drops_its_oldest_turns(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "s", session_max_turns=2
    ) as engine:
        first = await engine.ask("Which port does Kestrel listen on?", session="mine")
        assert first.session == "mine"
        assert first.snapshot_version == 1
        # An edit that only adds text: one that removes some moves the session to the live
        # corpus (tests/security/test_sec_old_copies.py).
        with (corpus / "oncall.md").open("a") as oncall:
            oncall.write("\nNobody is on call at weekends.\n")
        await engine.refresh()
        second = await engine.ask("Who is on call?", session="mine")
        third = await engine.ask("When are deploys frozen?", session="mine")
        fresh = await engine.ask("Who is on call?")
        with pytest.raises(InvalidArgumentError):
            await engine.ask("x", fan_out=2, session="mine")
    assert second.snapshot_version == 1
    assert not second.session_snapshot_is_live
    assert fresh.snapshot_version == 2
    assert second.session_dropped_turns == 0
    assert second.session_turns == 2
    assert third.session_dropped_turns == 1
    assert third.session_turns == 2
    body = _messages(emulator)[2]["body"]
    assert len(body["messages"]) == 3  # one previous exchange, then the question
    assert _content(body)[-1]["text"] == "Who is on call?"


# --- budget cap ------------------------------------------------------------------------


async def test_a_question_over_the_daily_cap_is_refused_with_the_figures_and_not_sent(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine:
        cold = await engine.ask("Which port does Kestrel listen on?")
        warm = await engine.ask("When are deploys frozen?")
        assert cold.estimated_usd >= cold.cost_usd > 0
        assert warm.estimated_usd >= warm.cost_usd
        # The bound holds whatever is cached: a warm question's is its price written cold.
        spent = cold.cost_usd + warm.cost_usd
        engine.settings.max_usd_per_day = spent + warm.estimated_usd / 2
        sent = len(_messages(emulator))
        with pytest.raises(BudgetExceededError) as refused:
            await engine.ask("Who is on call?")
        assert len(_messages(emulator)) == sent  # nothing was sent
        assert refused.value.spent_usd == pytest.approx(spent)
        assert refused.value.estimate_usd == pytest.approx(warm.estimated_usd, rel=0.5)
        message = str(refused.value)
        assert f"${spent:.4f}" in message
        assert f"${engine.settings.max_usd_per_day:.2f}" in message

        async with Client(build_server(engine)) as mcp:  # type: ignore[arg-type]
            result = await mcp.call_tool("ask", {"question": "Who is on call?"})
        assert result.is_error
        assert "--max-usd-per-day" in result.content[0].text  # type: ignore[union-attr]
        assert len(_messages(emulator)) == sent


def test_the_cap_is_a_flag_of_serve_and_ask(tmp_path: Path) -> None:
    for command in (["serve"], ["ask"]):
        argv = [*command, "--corpus", str(tmp_path), "--max-usd-per-day", "2.5"]
        args = build_parser().parse_args(argv + (["q"] if command == ["ask"] else []))
        assert settings_from_args(args).max_usd_per_day == 2.5
    args = build_parser().parse_args(["ask", "--corpus", str(tmp_path), "q"])
    assert settings_from_args(args).max_usd_per_day is None


# --- coalescing --------------------------------------------------------------------------


async def test_concurrent_questions_on_a_cold_prefix_write_it_once(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine:
        emulator.fault(kind="delay", delay=1.0)  # the first response begins a second late
        answers: list[Any] = []

        async def one(question: str) -> None:
            answers.append(await engine.ask(question))

        async with anyio.create_task_group() as group:
            for n in range(5):
                group.start_soon(one, f"Which port does Kestrel listen on? ({n})")
        rows = engine.ledger.requests(engine.corpus_key)
    logged = [e["usage"] for e in _messages(emulator)]
    assert len(logged) == 5
    assert len(answers) == 5
    writes = [u for u in logged if u["cache_creation_input_tokens"]]
    assert len(writes) == 1, logged
    prefix = writes[0]["cache_creation_input_tokens"]
    reads = [u for u in logged if not u["cache_creation_input_tokens"]]
    assert all(u["cache_read_input_tokens"] == prefix for u in reads)
    assert sum(r.cache_write_5m_tokens + r.cache_write_1h_tokens for r in rows) == prefix


async def test_when_the_writer_fails_before_it_begins_a_waiting_question_writes(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine:
        emulator.fault(status=529, error_type="overloaded_error")
        outcomes: list[str] = []

        async def one(n: int) -> None:
            try:
                await engine.ask(f"When are deploys frozen? ({n})")
                outcomes.append("ok")
            except ApiCallError:
                outcomes.append("error")

        async with anyio.create_task_group() as group:
            for n in range(3):
                group.start_soon(one, n)
    assert sorted(outcomes) == ["error", "ok", "ok"]
    logged = [e["usage"] for e in _messages(emulator) if e["status"] == 200]
    assert len(logged) == 2
    assert len([u for u in logged if u["cache_creation_input_tokens"]]) == 1
