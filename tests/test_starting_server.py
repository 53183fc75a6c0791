"""`corpus-cache serve` answers MCP before its engine's stack (the SDK, the emulator, the
ledger) has loaded: the lists at once and exactly as a started server's, and tools that
need the engine wait for it, or say the server is starting, or why it could not start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError

from corpus_cache.config import Settings
from corpus_cache.engine.runtime import first_index
from corpus_cache.errors import SetupError
from corpus_cache.mcp_surface.server import build_server
from corpus_cache.mcp_surface.startup import EngineSlot
from corpus_cache.models.catalog import load_catalog
from support.commands import run, stderr_until
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on

pytestmark = pytest.mark.anyio


def slot_for(corpus: Path, state: Path, **settings: Any) -> EngineSlot:
    config = Settings(corpus=corpus, state_dir=state, **settings)
    return EngineSlot(config, load_catalog().get(config.model))


def test_initialize_and_the_lists_are_answered_before_the_engine_stack_has_loaded(
    tmp_path: Path,
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["CORPUS_CACHE_STATE_DIR"] = str(tmp_path / "state")
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "start-test", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "resources/list"},
        {"jsonrpc": "2.0", "id": 4, "method": "prompts/list"},
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "corpus_cache", "serve", "--corpus", str(corpus), "--no-watch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        # All at once, as a client's first messages wait on stdin before the server reads.
        process.stdin.write("\n".join(json.dumps(m) for m in messages) + "\n")
        process.stdin.flush()
        responses: dict[int, Any] = {}
        while len(responses) < 4:
            line = process.stdout.readline()
            assert line, "the server closed stdout early"
            message = json.loads(line)
            responses[message["id"]] = message["result"]
        tools = [t["name"] for t in responses[2]["tools"]]
        assert tools == [
            "ask", "search", "list_documents", "read_document", "cache_status", "refresh"
        ]  # fmt: skip
        # The server says, once its engine has started, what it answered before: the
        # engine's start comes after its imports (the SDK among them).
        seen = stderr_until(process, "engine started")
        started = [line for line in seen if "engine started" in line]
        assert started, seen
        for method in ("initialize", "tools/list", "resources/list", "prompts/list"):
            assert method in started[0].split("answered meanwhile:")[1]
        process.stdin.close()  # end of input: the server shuts down
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_a_starting_server_lists_exactly_the_tools_prompts_and_templates_of_a_started_one(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    slot = slot_for(corpus, tmp_path / "state")
    async with (
        engine_on(corpus, running_emulator.base_url, tmp_path / "state") as engine,
        Client(build_server(slot)) as starting,
        Client(build_server(engine)) as started,
    ):
        for listing in ("list_tools", "list_prompts", "list_resource_templates"):
            before = await getattr(starting, listing)()
            after = await getattr(started, listing)()
            assert before.model_dump() == after.model_dump(), listing
        assert starting.server_capabilities == started.server_capabilities


async def test_a_tool_called_while_the_server_starts_waits_for_its_engine_then_answers(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    slot = slot_for(corpus, tmp_path / "state", index_wait=60, heartbeat_interval=0.02)
    waiting = anyio.Event()
    reports: list[str | None] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        reports.append(message)
        waiting.set()

    results: list[types.CallToolResult] = []
    async with Client(build_server(slot)) as mcp:

        async def search() -> None:
            arguments = {"query": "deploys frozen"}
            results.append(await mcp.call_tool("search", arguments, progress_callback=progress))

        async with (
            engine_on(corpus, running_emulator.base_url, tmp_path / "state") as engine,
            anyio.create_task_group() as group,
        ):
            group.start_soon(search)
            await waiting.wait()  # the engine arrives only once the call is seen waiting
            slot.arrive(engine)
    assert not results[0].is_error
    assert results[0].structured_content["hits"]  # type: ignore[index]
    assert reports[0] is not None
    assert "the server is starting" in reports[0]


async def test_tools_say_the_server_is_starting_when_its_engine_does_not_come_in_time(
    tmp_path: Path,
) -> None:
    slot = slot_for(write_corpus(tmp_path / "corpus"), tmp_path / "state", index_wait=0)
    async with Client(build_server(slot)) as mcp:
        search = await mcp.call_tool("search", {"query": "deploys"})
        assert search.is_error
        text = search.content[0].text  # type: ignore[union-attr]
        assert "the server is starting" in text
        assert "ask again in a few seconds" in text
        status = await mcp.call_tool("cache_status", {})
        assert not status.is_error
        assert status.structured_content["indexing"]["phase"] == "starting"  # type: ignore[index]
        assert status.structured_content["model"] == slot.model.id  # type: ignore[index]
        shown = status.content[0].text  # type: ignore[union-attr]
        assert "the server is starting" in shown
        assert "Spend" not in shown  # the ledger is not read yet: no made-up zero
        stats = await mcp.read_resource("corpus://stats")
        assert '"starting"' in stats.contents[0].text  # type: ignore[union-attr]
        index = await mcp.read_resource("corpus://index")
        assert '"starting"' in index.contents[0].text  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="the server is starting"):
            await mcp.read_resource("corpus://doc/deploys.md")
        assert (await mcp.call_tool("refresh", {})).is_error


async def test_a_server_whose_engine_could_not_start_says_why_in_every_tool(
    tmp_path: Path,
) -> None:
    slot = slot_for(write_corpus(tmp_path / "corpus"), tmp_path / "state", index_wait=5)
    slot.fail(SetupError("the emulator could not bind a loopback port"))
    async with Client(build_server(slot)) as mcp:
        for tool, arguments in (("search", {"query": "x"}), ("ask", {"question": "x?"})):
            called = await mcp.call_tool(tool, arguments)
            assert called.is_error
            text = called.content[0].text  # type: ignore[union-attr]
            assert "the server could not start: the emulator could not bind" in text
        status = await mcp.call_tool("cache_status", {})
        assert "could not start" in status.content[0].text  # type: ignore[union-attr]


async def test_a_client_that_listed_while_the_server_started_hears_the_documents_arrive(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    slot = slot_for(corpus, tmp_path / "state")
    changed = anyio.Event()

    async def inbox(message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceListChangedNotification):
            changed.set()

    server = build_server(slot)
    async with Client(server, mode="legacy", message_handler=inbox) as mcp:  # type: ignore[arg-type]
        before = (await mcp.list_resources()).resources
        async with engine_on(
            corpus, running_emulator.base_url, tmp_path / "state", index=False
        ) as engine:
            slot.attach(engine)  # as serve does: before the first index can swap
            slot.arrive(engine)
            await first_index(engine)
            with anyio.fail_after(30):
                await changed.wait()
            after = (await mcp.list_resources()).resources
    assert not any(str(r.uri).startswith("corpus://doc/") for r in before)
    assert "corpus://doc/deploys.md" in {str(r.uri) for r in after}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--tier", "9"], "unknown tier '9'; the limits table has tiers 1, 2, 3, 4"),
        (["--model", "claude-imaginary-1"], "unknown model"),
    ],
)
def test_serve_stops_at_once_on_what_would_stop_its_engine(
    tmp_path: Path, given: list[str], message: str
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    result = run(["serve", "--corpus", str(corpus), *given], tmp_path / "state")
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""  # nothing was served
    assert "emulator" not in result.stderr
    assert "Traceback" not in result.stderr


def test_what_serve_imports_before_its_first_answer_leaves_the_sdk_and_the_engine_out() -> None:
    # The modules `serve` loads before it answers; the SDK (about 1 s of imports) and
    # everything that needs it load afterwards. Any module of the MCP surface that imports
    # them at run time puts that second back in front of `initialize`.
    probe = (
        "import sys, corpus_cache.cli.main, corpus_cache.mcp_surface.server, "
        "corpus_cache.mcp_surface.startup, corpus_cache.engine.preflight; "
        "print(sorted(m for m in ('anthropic', 'numpy', 'corpus_cache.engine.core', "
        "'corpus_cache.api.caller', 'corpus_cache.emulator') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]"
