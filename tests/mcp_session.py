"""An engine on a folder, served in memory to a real MCP client, with any settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from anthropic import AsyncAnthropic
from mcp import Client

from corpus_cache.backend import Backend
from corpus_cache.catalog import load_catalog
from corpus_cache.config import Settings
from corpus_cache.engine import Engine
from corpus_cache.ledger import Ledger
from corpus_cache.mcp_server import build_server


@asynccontextmanager
async def serving(
    corpus: Path, base_url: str, state: Path, mode: str = "auto", **settings: Any
) -> AsyncIterator[tuple[Client, Engine]]:
    config = Settings(corpus=corpus, state_dir=state, **settings)
    ledger = Ledger(config.ledger_path)
    client = AsyncAnthropic(base_url=base_url, api_key="test-key", max_retries=0)
    engine = Engine(config, load_catalog(), Backend(client, "anthropic"), ledger)
    await engine.refresh()
    try:
        async with Client(build_server(engine), mode=mode) as mcp:  # type: ignore[arg-type]
            yield mcp, engine
    finally:
        await client.close()
        ledger.close()
