"""One server and one real MCP client for many hypothesis examples.

The client runs in an event loop on a thread of its own (an anyio blocking portal) and
each example calls into it, so a case costs a round trip, not a server start. Anything
logged at ERROR meanwhile is kept: the SDK logs a tool's crash that way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ReadResourceResult

from corpus_cache.engine.core import Engine
from support.mcp_session import serving

CALL_SECONDS = 60.0  # a case that takes longer has hung


class CrashLog(logging.Handler):
    """Records logged at ERROR or above anywhere: the SDK logs a tool's crash this way."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Served:
    """The portal's event loop, the client connected in it, and the engine behind it."""

    def __init__(
        self,
        portal: BlockingPortal,
        client: Client,
        engine: Engine,
        corpus: Path,
        crashes: CrashLog,
    ) -> None:
        self.portal = portal
        self.client = client
        self.engine = engine
        self.corpus = corpus
        self.crashes = crashes

    def __repr__(self) -> str:
        return f"Served({self.corpus})"

    def call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        async def call() -> CallToolResult:
            with anyio.fail_after(CALL_SECONDS):
                return await self.client.call_tool(name, arguments)

        return self.portal.call(call)

    def read(self, uri: str) -> ReadResourceResult | str:
        """The resource, or the message of the protocol error that refused it."""

        async def read() -> ReadResourceResult | str:
            with anyio.fail_after(CALL_SECONDS):
                try:
                    return await self.client.read_resource(uri)
                except MCPError as exc:
                    return exc.error.message

        return self.portal.call(read)

    def still_works(self) -> None:
        async def check() -> None:
            with anyio.fail_after(CALL_SECONDS):
                await self.client.list_tools()
                status = await self.client.call_tool("cache_status", {})
                assert not status.is_error, status

        self.portal.call(check)


@contextmanager
def served_in_a_portal(
    corpus: Path, base_url: str, state: Path, mode: str = "auto", **settings: Any
) -> Iterator[Served]:
    crashes = CrashLog()
    logging.getLogger().addHandler(crashes)
    try:
        with (
            start_blocking_portal() as portal,
            portal.wrap_async_context_manager(
                serving(corpus, base_url, state, mode, heartbeat_interval=5, **settings)
            ) as (client, engine),
        ):
            yield Served(portal, client, engine, corpus, crashes)
    finally:
        logging.getLogger().removeHandler(crashes)
