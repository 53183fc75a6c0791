"""An engine on a real folder, the watcher running on it, and ways to wait for what the
watcher does without sleeping: on the swaps the engine reports, under a deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.corpus.documents import Snapshot
from corpus_cache.corpus.watch import FolderWatcher
from corpus_cache.engine.core import Engine

DEADLINE = 10.0  # generous: a loaded machine may be slow, a passing test is not


class Swaps:
    """Counts the engine's corpus swaps and waits for a snapshot that satisfies a test."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.count = 0
        self._swapped = anyio.Event()
        engine.on_swap(self._on_swap)

    async def _on_swap(self, old: Corpus | None, new: Corpus) -> None:
        self.count += 1
        self._swapped.set()
        self._swapped = anyio.Event()

    async def until(self, test: Callable[[Snapshot], bool], deadline: float = DEADLINE) -> Snapshot:
        with anyio.fail_after(deadline):
            while True:
                swapped = self._swapped
                snapshot = self.engine.current.snapshot
                if test(snapshot):
                    return snapshot
                await swapped.wait()


async def condition(test: Callable[[], bool], deadline: float = DEADLINE) -> None:
    """Wait for a state that no event announces (the watcher noticing a folder is gone)."""
    with anyio.fail_after(deadline):
        while True:
            if test():
                return
            await anyio.sleep(0.01)


class Told:
    """The engine's refresh, remembering what the watcher told each call: the files that
    changed, or None for the whole folder."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[frozenset[str] | None] = []

    async def __call__(self, *, changed: frozenset[str] | None = None) -> object:
        self.calls.append(changed)
        return await self.engine.refresh(changed=changed)


@asynccontextmanager
async def watched(
    engine: Engine, *, poll: bool = False, debounce: float = 0.05, told: Told | None = None
) -> AsyncIterator[FolderWatcher]:
    """The watcher running on the engine's folder, past its first catch-up rescan."""
    refresh = told if told is not None else engine.refresh
    watcher = FolderWatcher(engine.settings.corpus, refresh, debounce=debounce, poll=poll)
    async with anyio.create_task_group() as group:
        await group.start(watcher.run)
        await condition(lambda: watcher.stats.refreshes >= 1)
        try:
            yield watcher
        finally:
            group.cancel_scope.cancel()


def paths(snapshot: Snapshot) -> set[str]:
    return {doc.path for doc in snapshot.documents}


def text_of(snapshot: Snapshot, path: str) -> str | None:
    doc = snapshot.get(path)
    return doc.text if doc is not None else None


class Seen:
    """Every snapshot the engine swaps in, even those replaced before a test looks."""

    def __init__(self, engine: Engine) -> None:
        self.snapshots: list[Snapshot] = []
        engine.on_swap(self._on_swap)

    async def _on_swap(self, old: Corpus | None, new: Corpus) -> None:
        self.snapshots.append(new.snapshot)

    def texts(self) -> list[str]:
        """The text of every document of every snapshot seen."""
        return [d.text for s in self.snapshots for d in s.documents]

    def left_out(self) -> set[tuple[str, str]]:
        """Every (path, reason) any snapshot seen left out."""
        return {(s.path, s.reason) for snap in self.snapshots for s in snap.skipped}
