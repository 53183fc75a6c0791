"""Tools called while the first index of the folder still runs in the background: they wait
a little for it (with progress notifications), then say plainly how far it is."""

from __future__ import annotations

import anyio

from corpus_cache.engine.core import Engine
from corpus_cache.errors import IndexingError
from corpus_cache.mcp_surface.heartbeat import ProgressReporter


async def corpus_ready(
    engine: Engine, report: ProgressReporter | None = None, *, interval: float | None = None
) -> None:
    """Return once the engine has a corpus to answer from. While its first index runs, wait
    for it up to `index_wait` seconds, reporting progress every `interval` seconds (the
    heartbeat's by default), then raise `IndexingError` saying how far it is and when to ask
    again; if the first index failed, raise why."""
    if engine.indexed:
        return
    indexing = engine.indexing
    wait = engine.settings.index_wait
    every = interval if interval is not None else engine.settings.heartbeat_interval
    started = anyio.current_time()

    async def beat() -> None:
        while True:
            await anyio.sleep(every)
            if report is not None:
                elapsed = round(anyio.current_time() - started, 1)
                await report(elapsed, wait, indexing.describe())

    if not indexing.done.is_set() and wait > 0:
        with anyio.move_on_after(wait):
            async with anyio.create_task_group() as group:
                group.start_soon(beat)
                await indexing.done.wait()
                group.cancel_scope.cancel()
    if engine.indexed:
        return
    if indexing.error is not None:
        raise IndexingError(f"the folder could not be indexed: {indexing.error}")
    raise IndexingError(indexing.advice())
