"""A server that answers before its engine is there, and tools that wait for it.

`corpus-cache serve` answers MCP (`initialize`, the lists) having loaded only the protocol's
modules; the engine's stack (the SDK, the emulator, the ledger) loads after, and the engine
then indexes the folder in the background. Tools that need the engine or the corpus wait a
little for them (with progress notifications), then say plainly how far the start is."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from corpus_cache.errors import CorpusCacheError, IndexingError
from corpus_cache.mcp_surface.heartbeat import ProgressReporter

if TYPE_CHECKING:  # the engine's modules load after the server answers
    from corpus_cache.config import Settings
    from corpus_cache.engine.core import Engine
    from corpus_cache.models.catalog import ModelSpec

log = logging.getLogger(__name__)

STARTING = "starting"


class EngineSlot:
    """The engine a server is built around, which arrives once the server answers (or is
    there from the start: `holding`). Made within the event loop.

    Two steps: `attach` as soon as the engine is made, before its first index can swap in
    a corpus, for what must see every swap (change notifications); `arrive` once it also
    watches its folder, for the tools to use it."""

    def __init__(
        self, settings: Settings, model: ModelSpec, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.model = model
        self.engine: Engine | None = None
        self.error: CorpusCacheError | None = None  # why the engine could not start
        self.settled = anyio.Event()  # set once the engine has arrived, or failed to
        self.answered: list[str] = []  # MCP methods answered before it arrived, in order
        self.first_answer = anyio.Event()  # set once the server has answered a request
        self._clock = clock
        self._started = clock()
        self._attached: Engine | None = None
        self._on_attach: list[Callable[[Engine], None]] = []

    @classmethod
    def holding(cls, engine: Engine) -> EngineSlot:
        slot = cls(engine.settings, engine.model)
        slot.attach(engine)
        slot.engine = engine
        slot.settled.set()
        return slot

    def on_attach(self, callback: Callable[[Engine], None]) -> None:
        """Call `callback(engine)` once the engine is made (at once if it is)."""
        if self._attached is not None:
            callback(self._attached)
        else:
            self._on_attach.append(callback)

    def attach(self, engine: Engine) -> None:
        self._attached = engine
        for callback in self._on_attach:
            callback(engine)
        self._on_attach.clear()

    def arrive(self, engine: Engine) -> None:
        if self._attached is not engine:
            self.attach(engine)
        self.engine = engine
        self.settled.set()
        answered = ", ".join(self.answered)
        meanwhile = f", which answered meanwhile: {answered}" if answered else ""
        log.info(
            "engine started %.2f s after the server began answering%s",
            self._clock() - self._started, meanwhile,
        )  # fmt: skip

    def fail(self, error: CorpusCacheError) -> None:
        self.error = error
        self.settled.set()

    def note_answered(self, method: str) -> None:
        self.first_answer.set()
        if self.engine is None and method not in self.answered:
            self.answered.append(method)

    def describe(self) -> str:
        if self.error is not None:
            return f"the server could not start: {self.error}"
        seconds = self._clock() - self._started
        return f"the server is starting: loading its engine ({seconds:.0f} s so far)"

    def advice(self) -> str:
        """`describe`, and when to ask again."""
        if self.error is not None:
            return self.describe()
        return f"{self.describe()}; ask again in a few seconds"


async def engine_ready(
    slot: EngineSlot, report: ProgressReporter | None = None, *, interval: float | None = None
) -> Engine:
    """The engine, once it has arrived: while it starts, wait for it up to `index_wait`
    seconds, reporting progress every `interval` seconds (the heartbeat's by default), then
    raise `IndexingError` saying so; if it could not start, raise why."""
    return await _arrived(slot, report, interval, anyio.current_time())


async def corpus_ready(
    slot: EngineSlot, report: ProgressReporter | None = None, *, interval: float | None = None
) -> Engine:
    """The engine, once it has a corpus to answer from. While it starts and then runs its
    first index, wait for both up to `index_wait` seconds in all, reporting progress every
    `interval` seconds (the heartbeat's by default), then raise `IndexingError` saying how
    far it is and when to ask again; if either failed, raise why."""
    started = anyio.current_time()
    engine = await _arrived(slot, report, interval, started)
    if engine.indexed:
        return engine
    indexing = engine.indexing
    if not indexing.done.is_set():
        await _wait(indexing.done, slot, report, interval, started, indexing.describe)
    if engine.indexed:
        return engine
    if indexing.error is not None:
        raise IndexingError(f"the folder could not be indexed: {indexing.error}")
    raise IndexingError(indexing.advice())


async def _arrived(
    slot: EngineSlot, report: ProgressReporter | None, interval: float | None, started: float
) -> Engine:
    if slot.engine is None and slot.error is None:
        await _wait(slot.settled, slot, report, interval, started, slot.describe)
    if slot.engine is not None:
        return slot.engine
    raise IndexingError(slot.advice())


async def _wait(
    event: anyio.Event,
    slot: EngineSlot,
    report: ProgressReporter | None,
    interval: float | None,
    started: float,
    describe: Callable[[], str],
) -> None:
    """Wait for `event` until `index_wait` seconds after `started`, reporting progress:
    the elapsed time out of that wait, and `describe()`."""
    wait = slot.settings.index_wait
    every = interval if interval is not None else slot.settings.heartbeat_interval

    async def beat() -> None:
        while True:
            await anyio.sleep(every)
            if report is not None:
                elapsed = round(anyio.current_time() - started, 1)
                await report(elapsed, wait, describe())

    left = wait - (anyio.current_time() - started)
    if left > 0:
        with anyio.move_on_after(left):
            async with anyio.create_task_group() as group:
                group.start_soon(beat)
                await event.wait()
                group.cancel_scope.cancel()
