"""Which of the servers sharing a state folder keeps the cache (accounting/lease.py).

Only the keeper sends background requests: keep-warm (engine/runtime.keeping_warm),
pre-warm after a change and the staged builds it starts (engine/warm.py). The others
answer questions, reading what the keeper keeps warm. Before each background request the
keeper beats once more (`Keeper.confirm`): a keeper that stalled past its lease and was
replaced learns it there, and sends nothing. An engine with no keeper (a command that asks
once, a test) is alone and keeps its own cache.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from corpus_cache.accounting.lease import BEAT_SECONDS, Instance, LeaseStore, Standing
from corpus_cache.accounting.storage import describe_fault

log = logging.getLogger(__name__)


class Keeper:
    """This instance's part in the election: its beats, and what the last one found."""

    def __init__(
        self,
        path: os.PathLike[str] | str,
        corpus: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        *,
        busy_timeout: float = 1.0,
    ) -> None:
        """Raises sqlite3.Error or OSError when the state folder's ledger cannot be opened."""
        self.clock, self.sleep = clock, sleep
        self.me = Instance(uuid.uuid4().hex, os.getpid(), clock())
        self.store = LeaseStore(Path(path), corpus, self.me, busy_timeout)
        self.standing: Standing | None = None
        self._keeping = anyio.Event()  # set while this instance keeps the cache

    @property
    def is_keeper(self) -> bool:
        return self.standing is not None and self.standing.keeper

    def beat(self) -> bool:
        """One beat now; whether this instance keeps the cache after it. A beat that cannot
        write the state folder (locked past the busy timeout, a full disk) leaves a keeper
        that was alone keeping its cache, and any other not the keeper until one can: it
        cannot tell whether another has taken the lease."""
        was, previous = self.is_keeper, self.standing
        seen = previous.seen_expired if previous is not None else None
        try:
            standing = self.store.beat(self.clock(), seen)
        except sqlite3.Error as exc:
            alone = previous is not None and previous.keeper and previous.instances == 1
            if was and not alone:
                log.warning("cannot renew the keeper's lease in %s: %s; not keeping the cache "
                            "warm until it can", self.store.path,
                            describe_fault(exc, self.store.busy_timeout))  # fmt: skip
                self.standing = None
                self._keeping = anyio.Event()
            return alone
        self.standing = standing
        if standing.keeper and not was:
            log.info("keeping the cache for %d instance(s) on this state folder",
                     standing.instances)  # fmt: skip
            self._keeping.set()
        elif was and not standing.keeper:
            holder = standing.lease.pid if standing.lease is not None else None
            log.warning("no longer keeping the cache: process %s does", holder)
            self._keeping = anyio.Event()
        return standing.keeper

    def confirm(self) -> bool:
        """Whether this instance still keeps the cache, by a beat now (a renewal)."""
        return self.beat()

    async def until_keeping(self) -> None:
        """Return once this instance keeps the cache."""
        while not self.is_keeper:
            await self._keeping.wait()

    async def run(self) -> None:
        """Beat every BEAT_SECONDS, on the engine's clock, until cancelled."""
        while True:
            await self.sleep(BEAT_SECONDS)
            self.beat()

    def release(self) -> None:
        """Give up the lease on a clean exit: another instance takes it at its next beat."""
        try:
            self.store.release()
        except sqlite3.Error as exc:
            log.warning("could not release the keeper's lease in %s (%s): another instance "
                        "takes it when it expires", self.store.path, exc)  # fmt: skip
        self.standing = None
        self.store.close()


@asynccontextmanager
async def elected(
    path: os.PathLike[str] | str,
    corpus: str,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> AsyncIterator[Keeper | None]:
    """Take part in the election while the block runs (its first beat before the block
    starts); release the lease after. Yields None, after a warning, when the state folder's
    ledger cannot be opened: the server keeps its own cache, as if alone."""
    try:
        keeper = Keeper(path, corpus, clock, sleep)
    except (sqlite3.Error, OSError) as exc:
        log.warning("cannot take part in electing which server keeps the cache (%s: %s); "
                    "this one keeps its own", path, exc)  # fmt: skip
        yield None
        return
    keeper.beat()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(keeper.run)
            try:
                yield keeper
            finally:
                group.cancel_scope.cancel()
    finally:
        keeper.release()
