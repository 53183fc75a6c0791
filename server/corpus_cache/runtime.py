"""Open everything an engine needs (catalog, backend, ledger), index once, close it all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .backend import open_backend
from .catalog import load_catalog
from .config import Settings
from .engine import Engine
from .ledger import Ledger


@asynccontextmanager
async def running_engine(
    settings: Settings, progress: Callable[[int, int], None] | None = None
) -> AsyncIterator[Engine]:
    catalog = load_catalog(settings.models_file)
    catalog.get(settings.model)  # an unknown model fails here, before anything starts
    ledger = Ledger(settings.ledger_path)
    backend = open_backend(catalog, offline=settings.offline, timeout=settings.request_timeout)
    try:
        engine = Engine(settings, catalog, backend, ledger)
        await engine.refresh(progress)
        yield engine
    finally:
        await backend.close()
        ledger.close()
