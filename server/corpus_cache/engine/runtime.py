"""Open everything an engine needs (catalog, backend, ledger), index once, close it all;
and keep the engine's corpus in step with its folder while a server runs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.backend import Backend, open_backend
from corpus_cache.api.emulator_clock import EmulatorClock
from corpus_cache.config import Settings
from corpus_cache.corpus.scan import CorpusRoot
from corpus_cache.corpus.watch import FolderWatcher
from corpus_cache.engine.core import Engine
from corpus_cache.engine.keeper import Keeper, elected
from corpus_cache.engine.preflight import Preflight, preflight
from corpus_cache.engine.warm import next_ping_at, prewarm_after_changes
from corpus_cache.errors import CorpusCacheError
from corpus_cache.models.catalog import Catalog

log = logging.getLogger(__name__)


@asynccontextmanager
async def running_engine(
    settings: Settings,
    progress: Callable[[int, int], None] | None = None,
    *,
    keep_emulator: bool = False,
    background: bool = False,
    checked: Preflight | None = None,
) -> AsyncIterator[Engine]:
    """`keep_emulator`: offline, answer with an emulator that outlives this process (for a
    command that asks once and ends, so that the next one reads this one's cache).
    `background`: yield the engine at once and index the folder meanwhile (a server, which
    answers `initialize` and says how far indexing is); otherwise index first. Either way a
    missing or unreadable folder, an unknown model or tier fails here, before anything
    starts (`checked`: those checks made already, and what they opened)."""
    # The checks first: a missing folder fails before an emulator starts and says it answers.
    catalog, root = (checked.catalog, checked.root) if checked else _checked(settings)
    # Off the event loop: an emulator's start, or the SDK's TLS setup, takes a tenth of a
    # second or more, during which a server already answering would not.
    try:
        with anyio.CancelScope(shield=True):  # what opens is closed below, even if cancelled
            ledger, backend = await anyio.to_thread.run_sync(
                _open, settings, catalog, keep_emulator
            )
    except BaseException:
        root.close()
        raise
    clock: EmulatorClock | None = None
    try:
        if settings.clock == "emulator":
            clock = EmulatorClock(str(backend.client.base_url))
            engine = Engine(
                settings, catalog, backend, ledger, clock.now, root=root, sleep=clock.sleep
            )
        else:
            engine = Engine(settings, catalog, backend, ledger, root=root)
        try:
            async with engine.reading_answers():
                if not background:
                    await engine.refresh(progress)
                    prewarm_after_changes(engine)
                    yield engine
                    return
                async with anyio.create_task_group() as group:
                    group.start_soon(first_index, engine, progress)
                    try:
                        yield engine
                    finally:
                        group.cancel_scope.cancel()
        finally:
            engine.close()
    finally:
        await backend.close()
        ledger.close()
        if clock is not None:
            clock.close()


def _checked(settings: Settings) -> tuple[Catalog, CorpusRoot]:
    checked = preflight(settings)
    return checked.catalog, checked.root


def _open(settings: Settings, catalog: Catalog, keep_emulator: bool) -> tuple[Ledger, Backend]:
    ledger = Ledger(settings.ledger_path)
    try:
        backend = open_backend(
            catalog, offline=settings.offline, timeout=settings.request_timeout,
            keep_between=settings.state_dir if keep_emulator else None,
            models_file=settings.models_file, tier=settings.tier,
            limits_file=settings.limits_file,
        )  # fmt: skip
    except BaseException:
        ledger.close()
        raise
    return ledger, backend


async def first_index(engine: Engine, progress: Callable[[int, int], None] | None = None) -> None:
    """Index the folder for the first time; a failure is kept for the tools to report (and
    logged), and the folder is indexed again by the watcher's next refresh or `refresh`."""
    started = engine.clock()
    try:
        corpus = await engine.refresh(progress)
    except CorpusCacheError as exc:
        engine.indexing.error = exc
        engine.indexing.done.set()
        log.error("the folder could not be indexed: %s", exc)
        return
    log.info(
        "indexed %d documents in %.1f s (%d count_tokens calls)",
        len(corpus.snapshot.documents), engine.clock() - started, engine.counter.calls,
    )  # fmt: skip
    prewarm_after_changes(engine)


@asynccontextmanager
async def watching(engine: Engine) -> AsyncIterator[FolderWatcher | None]:
    """Refresh `engine` after every burst of changes in its folder while the block runs;
    yields None when the settings turn watching off."""
    settings = engine.settings
    if not settings.watch:
        yield None
        return
    watcher = FolderWatcher(
        settings.corpus,
        engine.refresh,
        debounce=settings.debounce_ms / 1000,
        poll=settings.poll,
        pinned=engine.root_identity,
    )
    async with anyio.create_task_group() as group:
        await group.start(watcher.run)
        try:
            yield watcher
        finally:
            group.cancel_scope.cancel()


@asynccontextmanager
async def keeping_warm(
    engine: Engine,
    check_every: float = 15.0,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> AsyncIterator[None]:
    """Send the keep-warm requests the TTL policy asks for while the block runs, if this
    engine keeps the cache (engine/keeper.py: alone, or elected among the servers sharing
    its state folder; one that becomes keeper picks the schedule up, sending at once what is
    due). A failed keep-warm request is logged and tried again `check_every` seconds later
    (it stays due); it never stops serving. `sleep`: on the engine's clock."""
    from corpus_cache.engine.warm import keep_warm_due

    async def loop() -> None:
        while True:
            keeper = engine.keeper
            if keeper is not None and not keeper.is_keeper:
                await keeper.until_keeping()
            engine.catch_up()  # what the other servers on the state folder did
            due = next_ping_at(engine)
            wait = check_every if due is None else max(0.0, due - engine.clock())
            await sleep(min(wait, check_every))
            if due is None or engine.clock() < due or not engine.keeps_cache():
                continue
            engine.catch_up()  # another server's question may have put it off
            again = next_ping_at(engine)
            if again is None or engine.clock() < again:
                continue
            try:
                await keep_warm_due(engine)
            except CorpusCacheError as exc:
                log.warning("keep-warm failed, trying again in %g s: %s", check_every, exc)
                await sleep(check_every)  # it is still due: do not hammer the API

    async with anyio.create_task_group() as group:
        group.start_soon(loop)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


@asynccontextmanager
async def keeping_the_cache(engine: Engine) -> AsyncIterator[Keeper | None]:
    """Take part, while the block runs, in electing which of the servers sharing the state
    folder keeps the cache (engine/keeper.py); the engine asks it before each background
    request. On the way out the lease is released, for another to take at once. None: the
    state folder's ledger cannot be opened, and the engine keeps its own cache."""
    async with elected(
        engine.settings.ledger_path, engine.corpus_key, engine.clock, engine.sleep
    ) as keeper:
        engine.keeper = keeper
        try:
            yield keeper
        finally:
            engine.keeper = None
