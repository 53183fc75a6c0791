"""Issue 15, class 10: an `ask` session belongs to the MCP connection that started it.

A second client naming the first one's session id (the id the first chose, or the one its
answer returned) gets a session of its own, as for any unknown id: its request carries
none of the first client's conversation. Real MCP clients: two in process on one server,
and two over streamable HTTP on one `serve` subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from corpus_cache.mcp_surface.server import build_server
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on
from test_http_transport import TOKEN, HttpServer, start_server, with_token

pytestmark = pytest.mark.anyio

FIRST = "Which port does Kestrel listen on, zebra-marmalade?"  # words no document has
SECOND = "When are deploys frozen?"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("sessions") / "corpus")


def _asked(emulator: Control) -> list[str]:
    """The JSON text of every Messages request the emulator received, in order."""
    import json

    return [json.dumps(e["body"]) for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"]


async def _ask(mcp: Client, question: str, session: str) -> dict[str, Any]:
    result = await mcp.call_tool("ask", {"question": question, "session": session})
    assert not result.is_error, result.content
    out = result.structured_content
    assert out is not None
    return out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_second_client_naming_the_first_ones_chosen_id_starts_a_session_of_its_own(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with (
        engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine,
        Client(build_server(engine), mode=mode) as first,  # type: ignore[arg-type]
        Client(build_server(engine), mode=mode) as second,  # type: ignore[arg-type]
    ):
        mine = await _ask(first, FIRST, "team-notes")
        theirs = await _ask(second, SECOND, "team-notes")
        again = await _ask(first, SECOND, mine["session"])
    assert theirs["session_turns"] == 1
    assert again["session_turns"] == 2  # the first client's own follow-up still continues
    requests = _asked(emulator)
    assert len(requests) == 3
    assert "zebra-marmalade" not in requests[1]
    assert "zebra-marmalade" in requests[2]


async def test_a_second_connection_naming_the_id_the_first_answer_returned_starts_its_own(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with (
        engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine,
        Client(build_server(engine), mode="legacy") as first,  # type: ignore[arg-type]
        Client(build_server(engine), mode="legacy") as second,  # type: ignore[arg-type]
    ):
        mine = await _ask(first, FIRST, "new")
        theirs = await _ask(second, SECOND, mine["session"])
    assert theirs["session_turns"] == 1
    assert "zebra-marmalade" not in _asked(emulator)[1]


@pytest.fixture(scope="module")
def http_server(
    corpus: Path, running_emulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpServer]:
    yield from start_server(
        corpus, tmp_path_factory.mktemp("state"), running_emulator.base_url, None
    )


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_two_http_clients_of_one_server_never_share_a_session(
    http_server: HttpServer, emulator: Control, mode: str
) -> None:
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=120)) as http_a,
        httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=120)) as http_b,
        Client(streamable_http_client(http_server.url, http_client=http_a), mode=mode) as first,  # type: ignore[arg-type]
        Client(streamable_http_client(http_server.url, http_client=http_b), mode=mode) as second,  # type: ignore[arg-type]
    ):
        mine = await _ask(first, FIRST, "team-notes")
        by_name = await _ask(second, SECOND, "team-notes")
        again = await _ask(first, SECOND, mine["session"])
    assert by_name["session_turns"] == 1
    assert again["session_turns"] == 2
    requests = _asked(emulator)
    assert all("zebra-marmalade" not in body for body in requests[1:-1])
    assert "zebra-marmalade" in requests[-1]


@pytest.fixture(scope="module")
def guarded_server(
    corpus: Path, running_emulator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpServer]:
    yield from start_server(
        corpus, tmp_path_factory.mktemp("guarded"), running_emulator.base_url, TOKEN
    )


async def test_over_http_in_the_2026_era_a_named_id_is_never_taken_as_is(
    guarded_server: HttpServer, emulator: Control
) -> None:
    """Requests of that era carry no connection: clients sharing the token cannot be told
    apart, so the server gives every session's id and a named one starts a new session."""
    async with (
        with_token() as http_a,
        with_token() as http_b,
        Client(streamable_http_client(guarded_server.url, http_client=http_a)) as first,  # type: ignore[arg-type]
        Client(streamable_http_client(guarded_server.url, http_client=http_b)) as second,  # type: ignore[arg-type]
    ):
        mine = await _ask(first, FIRST, "team-notes")
        theirs = await _ask(second, SECOND, "team-notes")
        again = await _ask(first, SECOND, mine["session"])
    assert mine["session"] != "team-notes"
    assert theirs["session"] not in ("team-notes", mine["session"])
    assert theirs["session_turns"] == 1
    assert again["session_turns"] == 2
    assert "zebra-marmalade" not in _asked(emulator)[1]
