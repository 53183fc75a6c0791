"""An engine on a folder, served in memory to a real MCP client, with any settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from corpus_cache.engine.core import Engine
from corpus_cache.mcp_surface.server import build_server
from support.engines import engine_on


@asynccontextmanager
async def serving(
    corpus: Path,
    base_url: str,
    state: Path,
    mode: str = "auto",
    api_key: str = "test-key",
    **settings: Any,
) -> AsyncIterator[tuple[Client, Engine]]:
    """An engine on the test emulator, and a real MCP client connected to it in memory."""
    async with (
        engine_on(corpus, base_url, state, api_key=api_key, **settings) as engine,
        Client(build_server(engine), mode=mode) as mcp,  # type: ignore[arg-type]
    ):
        yield mcp, engine
