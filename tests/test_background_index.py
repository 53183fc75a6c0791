"""A server answers `initialize` at once and indexes its folder in the background; tools
that need the corpus meanwhile wait a little, then say how far indexing is."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from corpus_cache.engine.runtime import first_index
from support.corpus_fixture import write_corpus, write_folder
from support.emulator_control import Control
from support.mcp_session import serving

pytestmark = pytest.mark.anyio


async def test_over_stdio_initialize_and_the_tool_list_answer_while_indexing_runs(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_folder(tmp_path / "corpus", 200)
    # The first count_tokens call of the index is held back far longer than this test
    # takes: indexing cannot end before the assertions below, whatever the machine's speed.
    emulator.fault(kind="delay", delay=60, path="/v1/messages/count_tokens")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env |= {
        "CORPUS_CACHE_STATE_DIR": str(tmp_path / "state"),
        "CORPUS_CACHE_INDEX_WAIT": "0",
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": running_emulator.base_url,
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corpus_cache", "serve", "--corpus", str(corpus), "--no-watch"],
        env=env,
    )
    async with Client(params) as client:  # initialize, answered before indexing ends
        tools = [t.name for t in (await client.list_tools()).tools]
        assert tools[0] == "ask"
        assert "cache_status" in tools
        status = await client.call_tool("cache_status", {})
        with anyio.fail_after(60):  # bounded: the engine starts behind the answering server
            while status.structured_content["indexing"]["phase"] == "starting":  # type: ignore[index]
                await anyio.sleep(0.05)
                status = await client.call_tool("cache_status", {})
        assert status.structured_content["indexing"] is not None  # type: ignore[index]
        assert "indexing the folder" in status.content[0].text  # type: ignore[union-attr]
        search = await client.call_tool("search", {"query": "depot"})
        assert search.is_error
        text = search.content[0].text  # type: ignore[union-attr]
        assert "indexing the folder" in text
        assert "ask again in" in text
        stats = await client.read_resource("corpus://stats")
        assert '"indexing"' in stats.contents[0].text  # type: ignore[union-attr]
    emulator.post("reset")


async def test_a_question_asked_during_indexing_waits_for_it_with_progress_then_answers(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "state", index=False, heartbeat_interval=0.02
    ) as (mcp, engine):
        waiting = anyio.Event()
        reports: list[str | None] = []

        async def progress(value: float, total: float | None, message: str | None) -> None:
            reports.append(message)
            waiting.set()

        answers: list[Any] = []

        async def ask() -> None:
            question = {"question": "When are deploys frozen?"}
            answers.append(await mcp.call_tool("ask", question, progress_callback=progress))

        # The index cannot begin until the question is seen waiting for it.
        async with anyio.create_task_group() as group, engine._refreshing:
            group.start_soon(first_index, engine)
            group.start_soon(ask)
            await waiting.wait()
            assert not engine.indexed
        (answer,) = answers
        assert not answer.is_error
        assert answer.structured_content["citations"]  # type: ignore[index]
        assert reports


async def test_tools_say_how_far_indexing_is_when_they_cannot_wait(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "state", index=False, index_wait=0
    ) as (mcp, engine):
        for tool, arguments in [
            ("ask", {"question": "When are deploys frozen?"}),
            ("search", {"query": "deploys"}),
            ("list_documents", {}),
            ("read_document", {"path": "deploys.md"}),
        ]:
            result = await mcp.call_tool(tool, arguments)
            assert result.is_error, tool
            assert "indexing the folder" in result.content[0].text, tool  # type: ignore[union-attr]
        assert [str(r.uri) for r in (await mcp.list_resources()).resources] == [
            "corpus://index",
            "corpus://stats",
        ]
        await first_index(engine)
        result = await mcp.call_tool("search", {"query": "deploys"})
        assert not result.is_error
        status = await mcp.call_tool("cache_status", {})
        assert status.structured_content["indexing"] is None  # type: ignore[index]


async def test_a_first_index_that_fails_is_reported_by_the_tools_with_its_reason(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with serving(corpus, running_emulator.base_url, tmp_path / "state", index=False) as (
        mcp,
        engine,
    ):
        emulator.fault(count=1, status=400, error_type="invalid_request_error",
                       path="/v1/messages/count_tokens")  # fmt: skip
        await first_index(engine)
        result = await mcp.call_tool("search", {"query": "deploys"})
        assert result.is_error
        assert "could not be indexed" in result.content[0].text  # type: ignore[union-attr]
        retried = await mcp.call_tool("refresh", {})  # the retry: the fault has passed
        assert not retried.is_error
        assert engine.indexed
