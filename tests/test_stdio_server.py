"""`corpus-cache serve` as a real subprocess, driven by a real MCP client over stdio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from support.corpus_fixture import write_corpus

pytestmark = pytest.mark.anyio


def server_command(corpus: Path) -> list[str]:
    return [sys.executable, "-m", "corpus_cache", "serve", "--corpus", str(corpus)]


def server_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["CORPUS_CACHE_STATE_DIR"] = str(state)
    return env


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_every_tool_and_resource_works_over_stdio(tmp_path: Path, mode: str) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    command = server_command(corpus)
    params = StdioServerParameters(
        command=command[0], args=command[1:], env=server_env(tmp_path / "state")
    )
    async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
        tools = [t.name for t in (await client.list_tools()).tools]
        expected = ["ask", "search", "list_documents", "read_document", "cache_status"]
        assert tools == [*expected, "refresh"]

        first = await client.call_tool("ask", {"question": "Which port does Kestrel listen on?"})
        second = await client.call_tool("ask", {"question": "When are deploys frozen?"})
        assert first.structured_content["backend"] == "offline-emulator"  # type: ignore[index]
        assert second.structured_content["usage"]["cache_read_tokens"] > 0  # type: ignore[index]
        assert any(
            c["path"] == "deploys.md"
            for c in second.structured_content["citations"]  # type: ignore[index]
        )

        search = await client.call_tool("search", {"query": "SEV-1 shipments", "limit": 2})
        assert search.structured_content["hits"][0]["path"] == "incidents.md"  # type: ignore[index]
        listing = await client.call_tool("list_documents", {"limit": 2})
        assert listing.structured_content["next_offset"] == 2  # type: ignore[index]
        read = await client.call_tool("read_document", {"path": "deploys.md", "end_line": 1})
        assert read.structured_content["text"] == "# deploys.md\n"  # type: ignore[index]
        refused = await client.call_tool("read_document", {"path": "../../etc/passwd"})
        assert refused.is_error
        status = await client.call_tool("cache_status", {})
        assert status.structured_content["spend"]["requests"] == 2  # type: ignore[index]

        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert "corpus://doc/architecture/routing.md" in uris
        stats = await client.read_resource("corpus://stats")
        assert '"hit_rate"' in stats.contents[0].text  # type: ignore[union-attr]


def test_the_server_writes_nothing_but_protocol_messages_to_stdout(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "stdout-test", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "ask", "arguments": {"question": "When are deploys frozen?"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "cache_status", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "resources/read",
         "params": {"uri": "corpus://stats"}},
    ]  # fmt: skip
    process = subprocess.Popen(
        server_command(corpus),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(tmp_path / "state"),
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    responses: dict[int, dict[str, object]] = {}
    lines: list[str] = []
    process.stdin.write("\n".join(json.dumps(m) for m in messages) + "\n")
    process.stdin.flush()
    while len(responses) < 4:
        line = process.stdout.readline()
        assert line, "the server closed stdout early"
        lines.append(line)
        message = json.loads(line)  # every line on stdout is a JSON-RPC message
        assert message["jsonrpc"] == "2.0"
        if "id" in message:
            responses[int(message["id"])] = message
    process.stdin.close()  # end of input: the server shuts down
    assert process.wait(timeout=30) == 0
    rest = process.stdout.read()
    stderr = process.stderr.read() if process.stderr else ""
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert set(responses) == {1, 2, 3, 4}
    assert "offline emulator" in stderr  # the logs went to stderr
