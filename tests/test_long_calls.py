"""A slow answer sends progress while it is awaited and ends with a clear error at its
deadline, before the client's own timeout; the model is told which tool to use when."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from corpus_cache.errors import DeadlineExceededError
from corpus_cache.mcp_surface.heartbeat import with_heartbeat
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.mcp_session import serving

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


class Progress:
    def __init__(self) -> None:
        self.reports: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.reports.append((progress, total, message))


async def test_a_heartbeat_arrives_while_a_slow_answer_is_awaited(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    progress = Progress()
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", mode, heartbeat_interval=0.1
    ) as (mcp, _):
        emulator.fault(kind="delay", delay=0.6)
        result = await mcp.call_tool(
            "ask", {"question": "When are deploys frozen?"}, progress_callback=progress
        )
    assert not result.is_error, result.content
    assert len(progress.reports) >= 2
    values = [value for value, _, _ in progress.reports]
    assert values == sorted(set(values))  # progress only ever grows, as the protocol requires
    assert all(total == 50 for _, total, _ in progress.reports)  # out of the default deadline
    assert "waiting for the answer" in str(progress.reports[0][2])


async def test_a_fast_answer_sends_no_progress(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    progress = Progress()
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        result = await mcp.call_tool(
            "ask", {"question": "When are deploys frozen?"}, progress_callback=progress
        )
    assert not result.is_error
    assert progress.reports == []


async def test_the_deadline_ends_a_slow_answer_with_a_clear_error(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", mode, ask_deadline=0.3
    ) as (mcp, _):
        emulator.fault(kind="delay", delay=1.5)
        with anyio.fail_after(1.2):
            result = await mcp.call_tool("ask", {"question": "When are deploys frozen?"})
        search = await mcp.call_tool("search", {"query": "deploys"})  # the server is fine
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert "no answer within 0.3 s" in text
    assert "--ask-deadline" in text
    assert not search.is_error


async def test_with_heartbeat_passes_errors_through_unwrapped() -> None:
    async def fails() -> None:
        await anyio.sleep(0.05)
        raise DeadlineExceededError("the work's own error")

    progress = Progress()
    with pytest.raises(DeadlineExceededError, match="the work's own error"):
        await with_heartbeat(
            fails, progress, interval=0.01, deadline=5, waiting_for="w", on_deadline="x"
        )
    assert progress.reports  # it beat while the work ran


async def test_the_ask_corpus_prompt_asks_through_the_ask_tool(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s", mode) as (mcp, _):
        prompts = (await mcp.list_prompts()).prompts
        prompt = await mcp.get_prompt("ask_corpus", {"question": "Who carries the pager?"})
    assert [(p.name, p.title) for p in prompts] == [("ask_corpus", "Ask the corpus")]
    assert [a.name for a in prompts[0].arguments or []] == ["question"]
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert "Who carries the pager?" in text
    assert "`ask`" in text


async def test_instructions_and_annotations_tell_the_model_which_tool_to_use(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s", mode) as (mcp, _):
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        instructions = mcp.instructions
    for name in ("`ask`", "`search`", "`read_document`", "`list_documents`", "`cache_status`"):
        assert name in (instructions or "")
    local = ["search", "list_documents", "read_document", "cache_status"]
    for name in local:
        annotations = tools[name].annotations
        assert annotations is not None
        assert annotations.read_only_hint, name
        assert annotations.idempotent_hint, name
        assert annotations.open_world_hint is False, name
    ask = tools["ask"].annotations
    assert ask is not None
    assert ask.read_only_hint  # it reads the corpus ...
    assert ask.open_world_hint  # ... and calls the API
    assert all(t.title for t in tools.values())
