"""An engine on a test corpus, talking to the session's emulator over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.backend import Backend, api_client
from corpus_cache.config import Settings
from corpus_cache.engine.core import Engine
from corpus_cache.models.catalog import load_catalog


@asynccontextmanager
async def engine_on(
    corpus: Path,
    base_url: str,
    state: Path,
    *,
    api_key: str = "test-key",
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    max_retries: int = 0,
    index: bool = True,
    **settings: Any,
) -> AsyncIterator[Engine]:
    """An indexed engine (not yet indexed if `index` is false), reading its answers to
    their end as a server's does; its SDK client and ledger are closed on the way out. The
    caller does not retry unless `max_retries` says so."""
    config = Settings(corpus=corpus, state_dir=state, **settings)
    ledger = Ledger(config.ledger_path)
    client = api_client(
        base_url=base_url, api_key=api_key, max_retries=0, timeout=config.request_timeout
    )
    backend = Backend(
        client, "anthropic", retries=max_retries, request_timeout=config.request_timeout
    )
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    if sleep is not None:
        extra["sleep"] = sleep
    engine = Engine(config, load_catalog(), backend, ledger, **extra)
    try:
        async with engine.reading_answers():
            if index:
                await engine.refresh()
            yield engine
    finally:
        await client.close()
        ledger.close()
