"""`corpus-cache serve --transport http` as a real subprocess on a free loopback port,
driven by the real MCP client over streamable HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from support.commands import free_port, run
from support.corpus_fixture import write_corpus
from support.emulator_control import Control

TOKEN = "a-test-token-of-thirty-two-chars"
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "http-test", "version": "1"}},
}  # fmt: skip
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


class HttpServer:
    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process


def start_server(
    corpus: Path, state: Path, base_url: str, token: str | None
) -> Iterator[HttpServer]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CORPUS_"))}
    env.update(
        CORPUS_CACHE_STATE_DIR=str(state),
        CORPUS_CACHE_HEARTBEAT_INTERVAL="0.1",
        ANTHROPIC_API_KEY="test-key",
        ANTHROPIC_BASE_URL=base_url,
    )
    command = [sys.executable, "-m", "corpus_cache", "serve", "--corpus", str(corpus)]
    command += ["--transport", "http", "--port", str(port)]
    if token is not None:
        command += ["--auth-token", token]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx2.get(url, timeout=1)
                break
            except httpx2.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()  # reading stderr waits for it to close
                    stderr = process.stderr.read() if process.stderr else b""
                    raise RuntimeError(f"the server did not start: {stderr.decode()}") from None
                time.sleep(0.05)
        yield HttpServer(url, process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("http") / "corpus")


@pytest.fixture(scope="module")
def guarded(
    corpus: Path, running_emulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpServer]:
    state = tmp_path_factory.mktemp("guarded-state")
    yield from start_server(corpus, state, running_emulator.base_url, TOKEN)


@pytest.fixture(scope="module")
def open_loopback(
    corpus: Path, running_emulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpServer]:
    state = tmp_path_factory.mktemp("open-state")
    yield from start_server(corpus, state, running_emulator.base_url, None)


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def with_token(token: str = TOKEN) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=120)
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--host", "0.0.0.0"], {}, "refusing to serve on 0.0.0.0 without a bearer token"),
        (["--host", "192.0.2.7"], {}, "--auth-token TOKEN or set CORPUS_CACHE_AUTH_TOKEN"),
        (["--host", "0.0.0.0", "--auth-token", "short"], {}, "use at least 16"),
        (["--host", "0.0.0.0"], {"CORPUS_CACHE_AUTH_TOKEN": "short"}, "use at least 16"),
    ],
)
def test_a_non_loopback_bind_without_a_proper_token_is_refused(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    serve = ["serve", "--corpus", str(tmp_path), "--transport", "http", *args]
    refused = run(serve, tmp_path / "state", timeout=30, env_extra=env)
    assert refused.returncode == 2
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "corpus v" not in refused.stderr  # refused before indexing anything


def test_http_options_without_the_http_transport_are_refused(tmp_path: Path) -> None:
    refused = run(["serve", "--corpus", str(tmp_path), "--port", "9"], tmp_path / "state")
    assert refused.returncode == 2
    assert "--port apply to --transport http only" in refused.stderr


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", f"Bearer {TOKEN}x", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}"],
)
def test_requests_without_the_token_get_401_and_nothing_else(
    guarded: HttpServer, authorization: str | None
) -> None:
    headers = {**MCP_HEADERS, "Authorization": authorization} if authorization else MCP_HEADERS
    for response in (
        httpx2.post(guarded.url, json=INITIALIZE, headers=headers),
        httpx2.get(guarded.url, headers=headers),
        httpx2.get(guarded.url.replace("/mcp", "/"), headers=headers),
    ):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "corpus-cache" in response.json()["message"]
        assert "serverInfo" not in response.text


@pytest.mark.anyio
async def test_a_client_with_the_token_lists_the_tools_and_calls_them(
    guarded: HttpServer, emulator: Control, mode: str
) -> None:
    async with (
        with_token() as http,
        Client(streamable_http_client(guarded.url, http_client=http), mode=mode) as mcp,  # type: ignore[arg-type]
    ):
        tools = [t.name for t in (await mcp.list_tools()).tools]
        search = await mcp.call_tool("search", {"query": "Kestrel port", "limit": 2})
        status = await mcp.call_tool("cache_status", {})
    assert tools[:5] == ["ask", "search", "list_documents", "read_document", "cache_status"]
    assert search.structured_content["hits"][0]["path"] == "architecture/routing.md"  # type: ignore[index]
    assert status.structured_content["documents"] == 4  # type: ignore[index]


@pytest.mark.anyio
async def test_a_heartbeat_arrives_over_http_while_an_answer_is_slow(
    guarded: HttpServer, emulator: Control
) -> None:
    reports: list[float] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        reports.append(value)

    emulator.fault(kind="delay", delay=0.6)
    async with (
        with_token() as http,
        Client(streamable_http_client(guarded.url, http_client=http)) as mcp,
    ):
        answer = await mcp.call_tool(
            "ask", {"question": "When are deploys frozen?"}, progress_callback=progress
        )
    assert not answer.is_error, answer.content
    assert reports, "no progress notification arrived"


@pytest.mark.anyio
async def test_a_loopback_server_without_a_token_serves_and_checks_host_and_origin(
    open_loopback: HttpServer, emulator: Control
) -> None:
    async with Client(open_loopback.url) as mcp:
        tools = (await mcp.list_tools()).tools
    assert tools
    rebound = httpx2.post(
        open_loopback.url, json=INITIALIZE, headers={**MCP_HEADERS, "Host": "attacker.example"}
    )
    assert rebound.status_code == 421
    foreign = httpx2.post(
        open_loopback.url,
        json=INITIALIZE,
        headers={**MCP_HEADERS, "Origin": "http://attacker.example"},
    )
    assert foreign.status_code == 403
    local = httpx2.post(
        open_loopback.url,
        json=INITIALIZE,
        headers={**MCP_HEADERS, "Host": "localhost:1234", "Origin": "http://localhost:5173"},
    )
    assert local.status_code == 200
