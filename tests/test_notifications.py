"""Change notifications reach real MCP clients in both protocol eras, in memory and over
stdio: the resource list when documents come and go, each changed document, the index
and the stats."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent

from corpus_cache.engine.core import Engine
from corpus_cache.mcp_surface.server import build_server
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on
from support.live_folder import DEADLINE, Swaps, paths, watched

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed"),
]

DOC = "corpus://doc/oncall.md"
INDEX = "corpus://index"
STATS = "corpus://stats"


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", filler_sentences=12)


class Inbox:
    """The notifications a handshake-era client receives through its message_handler."""

    def __init__(self) -> None:
        self.received: list[types.ServerNotification] = []
        self._arrived = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if not isinstance(message, Exception):
            self.received.append(message)
            self._arrived.set()
            self._arrived = anyio.Event()

    def updated(self) -> list[str]:
        return [
            n.params.uri for n in self.received if isinstance(n, types.ResourceUpdatedNotification)
        ]

    def list_changes(self) -> int:
        return sum(isinstance(n, types.ResourceListChangedNotification) for n in self.received)

    async def until(self, test: Any) -> None:
        with anyio.fail_after(DEADLINE):
            while True:
                arrived = self._arrived
                if test(self):
                    return
                await arrived.wait()


@asynccontextmanager
async def live_server(
    corpus: Path, base_url: str, state: Path, mode: str, inbox: Inbox | None = None
) -> AsyncIterator[tuple[Client, Engine, Swaps]]:
    async with engine_on(corpus, base_url, state) as engine:
        swaps = Swaps(engine)
        client = Client(build_server(engine), mode=mode, message_handler=inbox)  # type: ignore[arg-type]
        async with client as mcp, watched(engine):
            yield mcp, engine, swaps


async def events_until(
    events: AsyncIterator[ServerEvent], wanted: set[ServerEvent]
) -> set[ServerEvent]:
    seen: set[ServerEvent] = set()
    with anyio.fail_after(DEADLINE):
        async for event in events:
            seen.add(event)
            if wanted <= seen:
                return seen
    raise AssertionError(f"the stream ended after {seen}")


async def test_both_eras_advertise_subscriptions_and_list_changes(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with live_server(corpus, running_emulator.base_url, tmp_path / "s", mode) as (mcp, *_):
        resources = mcp.server_capabilities.resources
    assert resources is not None
    assert resources.subscribe is True
    assert resources.list_changed is True


async def test_new_era_listeners_hear_of_edits_additions_and_removals(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with (
        live_server(corpus, running_emulator.base_url, tmp_path / "s", "auto") as (mcp, _, _s),
        mcp.listen(resources_list_changed=True, resource_subscriptions=[DOC, INDEX, STATS]) as sub,
    ):
        (corpus / "oncall.md").write_text("The rotation now hands over on Wednesdays.\n")
        edited = await events_until(
            sub, {ResourceUpdated(DOC), ResourceUpdated(INDEX), ResourceUpdated(STATS)}
        )
        assert ResourcesListChanged() not in edited  # an edit does not change the list

        (corpus / "runbook.md").write_text("Restart the router with `kestrel restart`.\n")
        await events_until(sub, {ResourcesListChanged(), ResourceUpdated(INDEX)})
        os.unlink(corpus / "oncall.md")
        removed = await events_until(sub, {ResourcesListChanged(), ResourceUpdated(DOC)})
        listed = {str(r.uri) for r in (await mcp.list_resources()).resources}
    assert ResourceUpdated("corpus://doc/deploys.md") not in removed  # not subscribed
    assert "corpus://doc/runbook.md" in listed
    assert DOC not in listed


async def test_old_era_subscribers_hear_of_their_resources_and_of_list_changes(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    inbox = Inbox()
    async with live_server(corpus, running_emulator.base_url, tmp_path / "s", "legacy", inbox) as (
        mcp,
        _,
        _s,
    ):
        await mcp.subscribe_resource(DOC)
        await mcp.subscribe_resource(INDEX)
        (corpus / "oncall.md").write_text("The rotation now hands over on Wednesdays.\n")
        await inbox.until(lambda i: {DOC, INDEX} <= set(i.updated()))
        assert inbox.list_changes() == 0
        assert "corpus://doc/deploys.md" not in inbox.updated()  # not subscribed

        await mcp.unsubscribe_resource(DOC)
        updates_before = len(inbox.updated())
        (corpus / "oncall.md").write_text("Edited again, after unsubscribing.\n")
        (corpus / "runbook.md").write_text("Restart the router with `kestrel restart`.\n")
        await inbox.until(lambda i: i.list_changes() >= 1)
        # Updates for one swap go out before its list change: none came for the document.
        assert DOC not in inbox.updated()[updates_before:]
        read = await mcp.read_resource("corpus://doc/runbook.md")
    assert "kestrel restart" in read.contents[0].text  # type: ignore[union-attr]


async def test_the_resource_list_follows_the_folder(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with live_server(corpus, running_emulator.base_url, tmp_path / "s", mode) as (
        mcp, _, swaps,
    ):  # fmt: skip
        (corpus / "odd name #1?.md").write_text("A file name that needs escaping.\n")
        os.unlink(corpus / "deploys.md")
        await swaps.until(lambda s: "deploys.md" not in paths(s) and len(s.documents) == 4)
        listed = {str(r.uri): r for r in (await mcp.list_resources()).resources}
        odd = "corpus://doc/odd name %231%3F.md"
        assert odd in listed
        assert "corpus://doc/deploys.md" not in listed
        read = await mcp.read_resource(odd)
        assert "needs escaping" in read.contents[0].text  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="not a document of this corpus"):
            await mcp.read_resource("corpus://doc/deploys.md")


def _server_params(corpus: Path, state: Path) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["CORPUS_CACHE_STATE_DIR"] = str(state)
    env["CORPUS_CACHE_INDEX_WAIT"] = "60"  # a tool waits for the server to start and index
    args = ["-m", "corpus_cache", "serve", "--corpus", str(corpus), "--debounce-ms", "20"]
    return StdioServerParameters(command=sys.executable, args=args, env=env)


async def test_a_save_reaches_a_client_of_corpus_cache_serve_over_stdio(
    corpus: Path, tmp_path: Path, mode: str
) -> None:
    inbox = Inbox()
    params = _server_params(corpus, tmp_path / "state")
    async with Client(params, mode=mode, message_handler=inbox) as mcp:  # type: ignore[arg-type]
        # The server answers before its engine starts: a save is seen once it has indexed.
        assert not (await mcp.call_tool("list_documents", {"limit": 1})).is_error
        if mode == "legacy":
            await mcp.subscribe_resource(DOC)
            (corpus / "oncall.md").write_text("The rotation now hands over on Wednesdays.\n")
            await inbox.until(lambda i: DOC in i.updated())
        else:
            async with mcp.listen(resource_subscriptions=[DOC]) as sub:
                (corpus / "oncall.md").write_text("The rotation now hands over on Wednesdays.\n")
                await events_until(sub, {ResourceUpdated(DOC)})
        read = await mcp.read_resource(DOC)
    assert "Wednesdays" in read.contents[0].text  # type: ignore[union-attr]
