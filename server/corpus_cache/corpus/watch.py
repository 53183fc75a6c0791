"""Watch the corpus folder and refresh once per burst of changes.

Watchdog reports events on its own threads. Each event that can matter is left in an
inbox under a lock, and only the first of a burst crosses to the event loop (one
`anyio.from_thread.run_sync` per burst, not per event). The loop acts on the first event
of a burst after a short settle (`debounce`, 15 ms by default: an editor's atomic save, a
temporary file written then renamed, lands within it as one change, and so does a script
saving files back to back), never later than `max_delay` after the loop heard of it, and
calls `refresh()` once; whatever arrives while it runs is coalesced into one more refresh.
The settle counts from when the loop heard of the burst at the earliest, and lasts until
watchdog has handed over every event it read: the thread that heard the first event waits
for the loop (a rebuild may keep it busy), and the rest of the burst is queued behind it.
So a save is live a settle and a rescan after it, and a `git checkout` of thousands of
files is one or two rebuilds. Debouncing lives here and nowhere else.

`refresh(changed=...)` is told the files the burst named, and only those are looked at
again (and the documents, shards and cache entries they touch). When the events cannot say
what changed, it is told None and the whole folder is rescanned: the catch-up when
watching starts, events lost (the kernel's queue overflowed), a folder created, moved or
deleted (its files come with no event each), polling, a folder too deep to watch, a retry
after a failure. The scan itself rescans all when a named file reaches further (a
`.gitignore`, a file with several names).

The folder itself may disappear (deleted, moved away, a network mount dropping). The last
snapshot is kept, a warning goes to the log, and once the folder is back at its path it is
rescanned and watched again. The folder is pinned (`pinned`: its device and inode, as the
engine opened it): another folder at its path, or a symlink to one (`mv corpus corpus.old;
ln -s /elsewhere corpus`), is never served; the last snapshot is kept, a warning says so,
and the folder is watched again if the original comes back to its path.

watchdog walks the folder recursively, natively and when polling alike, so a tree nested
deeper than Python's recursion limit cannot be watched: then the watcher looks at the
folder's names, sizes and times every few seconds and rescans when they change. If one of
watchdog's threads dies (a deep tree moved in), the folder is watched again from scratch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import stat
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.from_thread import run_sync as run_in_loop
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from ..errors import CorpusCacheError, CorpusNotFoundError
from .beneath import replaced_message
from .rules import PRUNED_DIRECTORIES

log = logging.getLogger(__name__)

# Folders created faster than watchdog adds their watches (`mkdir -p a/b/c`) make it warn
# that it replaced a watch it had just added: a benign race, and noise in the server log.
warnings.filterwarnings(
    "ignore", message="Callback with id", category=RuntimeWarning, module="watchdog"
)

DEFAULT_DEBOUNCE = 0.015  # the settle after a burst's events: short, not a quiet period
MAX_DELAY = 0.1  # the latest a burst is acted on after the loop heard of it (at least)
POLL_INTERVAL = 1.0  # seconds between two looks at the folder in polling mode
ROOT_CHECK_INTERVAL = 1.0  # how often to check that the folder is still the one watched
RETRY_DELAYS = (1.0, 2.0, 5.0, 15.0, 60.0)  # after a refresh fails, e.g. the API is away
RESCAN_INTERVAL = 2.0  # seconds between two looks at a folder that cannot be watched
QUEUE_CHECK_INTERVAL = 0.002  # while watchdog still hands over a burst's events

# Opening and reading a file (as the scan does) is not a change: leaving those event
# kinds out keeps a rescan from waking the watcher again.
EVENT_TYPES: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileAttribEvent, FileDeletedEvent,
    FileMovedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent, EventsLostEvent,
]  # fmt: skip


class Refresh(Protocol):
    """Rescan and swap in what changed: `changed`, the files (relative paths) that changed,
    or None when the watcher cannot say (the whole folder is rescanned)."""

    def __call__(self, *, changed: frozenset[str] | None = None) -> Awaitable[object]: ...


# --- filters: (relative path, is a directory) -> bool ------------------------------------


def in_pruned_folder(relative: str, is_directory: bool) -> bool:
    """Under a folder the scan prunes whole (.git, node_modules, ...): changes nothing."""
    parts = relative.split(os.sep)
    folders = parts if is_directory else parts[:-1]
    return any(part in PRUNED_DIRECTORIES for part in folders)


PathFilter = Callable[[str, bool], bool]
DEFAULT_IGNORES: tuple[PathFilter, ...] = (in_pruned_folder,)


# --- the watchdog side -----------------------------------------------------------------


class _Inbox:
    """Where watchdog's threads leave changed paths for the event loop."""

    def __init__(self, token: anyio.lowlevel.EventLoopToken) -> None:
        self._token = token
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._everything = False  # the paths do not say all that changed: rescan it all
        self._root_gone = False
        self._last_event = 0.0  # time.monotonic(), the clock anyio's asyncio backend uses
        self._signalled = False
        self._open = True
        self.wake = anyio.Event()  # touched on the loop thread only

    @property
    def last_event(self) -> float:
        with self._lock:
            return self._last_event

    def put(self, paths: list[str], root_gone: bool = False, everything: bool = False) -> None:
        """From a watchdog thread: record, and wake the loop if this starts a burst."""
        with self._lock:
            self._paths.update(paths)
            self._root_gone = self._root_gone or root_gone
            self._everything = self._everything or everything
            self._last_event = time.monotonic()
            if self._signalled or not self._open:
                return
            self._signalled = True
        with contextlib.suppress(anyio.RunFinishedError):  # the server is shutting down
            run_in_loop(self._set_wake, token=self._token)

    def poke(self) -> None:
        """From the loop: behave as if an event arrived (a catch-up rescan)."""
        with self._lock:
            self._last_event = time.monotonic()
            self._signalled = True
            self._everything = True
        self.wake.set()

    def _set_wake(self) -> None:
        self.wake.set()

    def take(self) -> tuple[set[str], bool, bool]:
        """On the loop: the paths since the last take, whether they say all that changed
        (not after a lost event or a folder's change), and whether the folder itself went.
        The next event starts a new burst."""
        with self._lock:
            paths, self._paths = self._paths, set()
            everything, self._everything = self._everything, False
            root_gone, self._root_gone = self._root_gone, False
            self._signalled = False
            self.wake = anyio.Event()  # replaced before any later put can schedule a wake
            return paths, not everything, root_gone

    def close(self) -> None:
        with self._lock:
            self._open = False


class _Handler(FileSystemEventHandler):
    def __init__(self, root: str, inbox: _Inbox, ignores: tuple[PathFilter, ...]) -> None:
        self._root = root
        self._prefix = root.rstrip(os.sep) + os.sep
        self._inbox = inbox
        self._ignores = ignores

    def dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, EventsLostEvent):  # the kernel's queue overflowed
            self._inbox.put([], everything=True)
            return
        paths = [os.fsdecode(p) for p in (event.src_path, event.dest_path) if p]
        if event.is_directory and event.event_type == "deleted" and self._root in paths:
            self._inbox.put([], root_gone=True)
            return
        relevant = [
            relative
            for path in paths
            if path.startswith(self._prefix)
            and not any(
                ignored(relative := path[len(self._prefix) :], event.is_directory)
                for ignored in self._ignores
            )
        ]
        if relevant:
            # A folder created, moved or deleted holds files no event names one by one.
            self._inbox.put(relevant, everything=event.is_directory)


def tree_fingerprint(root: str) -> str:
    """A digest of every name, size and modification time under `root` but the pruned
    folders: it changes when anything a rescan would see changes. Walked with a stack of its
    own, so no nesting is too deep for it."""
    digest = hashlib.blake2b(digest_size=16)
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            digest.update(f"{folder}\0{exc.errno}\n".encode(errors="surrogateescape"))
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            line = f"{entry.path}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\n"
            digest.update(line.encode(errors="surrogateescape"))
            if stat.S_ISDIR(info.st_mode) and entry.name not in PRUNED_DIRECTORIES:
                folders.append(entry.path)
    return digest.hexdigest()


def scandir_pruned(path: str | None) -> Iterator[os.DirEntry[str]]:
    """os.scandir without the folders the scan prunes or does not follow, so polling never
    walks them. watchdog's polling walk follows symlinks: a link to a parent folder would
    have it walk the tree again at every level, forever."""
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_symlink():
                try:
                    if entry.is_dir():
                        continue
                except OSError:  # a link in a loop: nothing behind it to watch
                    continue
            elif entry.name in PRUNED_DIRECTORIES and entry.is_dir(follow_symlinks=False):
                continue
            yield entry


# --- the event loop side ---------------------------------------------------------------


@dataclass
class WatchStats:
    """What the watcher has done, for logs, tests and benchmarks."""

    refreshes: int = 0
    failures: int = 0
    events: int = 0
    bursts: int = 0  # bursts of events acted on, each with one refresh (and its retries)
    polling: bool = False
    folder_missing: bool = False
    folder_replaced: bool = False  # another folder, or a symlink, is at the path: not served
    rescanning: bool = False  # the folder cannot be watched: it is looked at every few seconds


class FolderWatcher:
    """Calls `refresh()` after each burst of changes under `root`.

    Run it in a task group with `await group.start(watcher.run)`: it returns once the
    folder is watched, and stops watching when the task group is cancelled."""

    def __init__(
        self,
        root: Path,
        refresh: Refresh,
        *,
        debounce: float = DEFAULT_DEBOUNCE,
        poll: bool = False,
        max_delay: float | None = None,
        ignores: tuple[PathFilter, ...] = DEFAULT_IGNORES,
        pinned: tuple[int, int] | None = None,
    ) -> None:
        self.root = root
        self._pinned = pinned  # the folder being served: no other is ever watched
        self._refresh = refresh
        self.debounce = max(0.0, debounce)
        # A burst that goes on (a log written every few ms) is acted on all the same, and
        # what follows it is the next burst.
        self.max_delay = max_delay if max_delay is not None else max(MAX_DELAY, 10 * self.debounce)
        self._poll = poll
        self._ignores = ignores
        self.stats = WatchStats(polling=poll)
        self._observer: BaseObserver | None = None
        self._inbox: _Inbox | None = None
        self._identity: tuple[int, int] | None = None
        self._fingerprint = ""  # of the folder, while it is rescanned instead of watched

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        inbox = self._inbox = _Inbox(anyio.lowlevel.current_token())
        try:
            watching = await self._start_observer()
            task_status.started()
            while True:
                if watching:
                    # Whatever changed since the last scan sent no event: rescan once.
                    inbox.poke()
                    await self._watch_until_the_folder_goes(inbox)
                await self._wait_for_the_folder()
                watching = await self._start_observer()
        finally:
            inbox.close()
            with anyio.CancelScope(shield=True):
                await self._stop_observer()

    # --- watching ----------------------------------------------------------------------

    async def _watch_until_the_folder_goes(self, inbox: _Inbox) -> None:
        while True:
            with anyio.move_on_after(
                RESCAN_INTERVAL if self.stats.rescanning else ROOT_CHECK_INTERVAL
            ):
                await inbox.wake.wait()
            if not inbox.wake.is_set():
                if self._folder_replaced() or self._observer_died():
                    return
                if self.stats.rescanning and await self._folder_changed():
                    inbox.poke()
                continue
            await self._settle(inbox)
            changed, told, root_gone = inbox.take()
            if root_gone or self._folder_replaced():
                return
            self.stats.events += len(changed)
            self.stats.bursts += 1
            # Polling and a folder that cannot be watched name no files reliably.
            told = told and not (self.stats.polling or self.stats.rescanning)
            if not await self._refresh_with_retries(frozenset(changed) if told else None):
                return

    async def _settle(self, inbox: _Inbox) -> None:
        """Wait until no event arrived for `debounce` seconds (the settle) and watchdog has
        handed over every event it read, or until `max_delay` passed since the loop heard of
        the burst. The thread that heard the first event waited for the loop to take it (a
        rebuild may have kept the loop busy), so the rest of the burst, queued behind it,
        reaches the inbox only then: the settle counts from then at the earliest."""
        woke = time.monotonic()
        deadline = woke + self.max_delay
        while True:
            now = time.monotonic()
            quiet_at = min(max(inbox.last_event, woke) + self.debounce, deadline)
            if now >= quiet_at and (now >= deadline or not self._events_queued()):
                return
            await anyio.sleep(max(quiet_at - now, QUEUE_CHECK_INTERVAL))

    def _events_queued(self) -> bool:
        """Whether watchdog has read events it has not yet handed to the handler."""
        observer = self._observer
        return observer is not None and not observer.event_queue.empty()

    async def _refresh_with_retries(self, changed: frozenset[str] | None) -> bool:
        """Refresh (`changed`: the files that changed, None for all); on failure, retry
        the whole folder with backoff. False when the folder is gone."""
        for delay in (*RETRY_DELAYS, None):
            try:
                await self._refresh(changed=changed)
            except CorpusNotFoundError:
                return False
            # sqlite3.Error: a storage fault the ledger did not absorb (locked, full, corrupt).
            except (CorpusCacheError, OSError, sqlite3.Error) as exc:
                self.stats.failures += 1
                if delay is None:
                    log.error("refresh of %s failed again: %s; waiting for the next change",
                              self.root, exc)  # fmt: skip
                    return True
                log.warning("refresh of %s failed: %s; retrying in %g s", self.root, exc, delay)
                await anyio.sleep(delay)
                changed = None
            else:
                self.stats.refreshes += 1
                return True
        return True

    # --- the folder itself -------------------------------------------------------------

    def _current_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.root)
        except OSError:
            return None
        return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None

    def _servable_identity(self) -> tuple[int, int] | None:
        """The identity of the folder at the path, if it is one to watch: any folder, or
        only the pinned one."""
        identity = self._current_identity()
        if identity is None or (self._pinned is not None and identity != self._pinned):
            return None
        return identity

    def _folder_replaced(self) -> bool:
        """The folder is gone, or another folder now sits at its path."""
        return self._current_identity() != self._identity

    def _observer_died(self) -> bool:
        """One of watchdog's threads ended on an error (its traceback went to stderr): the
        observer looks alive, and hears nothing."""
        observer = self._observer
        if observer is None:
            return False
        # The inotify observer reads the kernel's events on a thread that is not an emitter.
        threads = [*observer.emitters, getattr(observer, "_inotify_fd", None)]
        if all(t.is_alive() for t in threads if isinstance(t, threading.Thread)):
            return False
        log.warning("watching %s stopped on an error: watching it again", self.root)
        return True

    async def _folder_changed(self) -> bool:
        fingerprint = await anyio.to_thread.run_sync(tree_fingerprint, str(self.root))
        changed, self._fingerprint = fingerprint != self._fingerprint, fingerprint
        return changed

    async def _wait_for_the_folder(self) -> None:
        await self._stop_observer()
        reported = ""
        while True:  # nothing can send an event about a folder that is not there
            identity = self._current_identity()
            if identity is None:
                state = "gone"
            elif self._pinned is not None and identity != self._pinned:
                state = "replaced"
            else:
                state = "here"
            self.stats.folder_missing = state == "gone"
            self.stats.folder_replaced = state == "replaced"
            if state == "here":
                break
            if state != reported:
                reported = state
                if state == "gone":
                    log.warning("the corpus folder %s is gone: serving the last snapshot "
                                "until it comes back", self.root)  # fmt: skip
                else:
                    log.warning("%s", replaced_message(self.root))
            await anyio.sleep(ROOT_CHECK_INTERVAL / 4)
        if reported:
            log.warning("the corpus folder %s is back: rescanning and watching it again",
                        self.root)  # fmt: skip
        elif identity != self._identity:
            log.warning("the corpus folder %s was replaced: rescanning and watching it",
                        self.root)  # fmt: skip

    # --- the observer ------------------------------------------------------------------

    def _require_inbox(self) -> _Inbox:
        if self._inbox is None:
            raise RuntimeError("the watcher is not running")
        return self._inbox

    def _new_observer(self, poll: bool) -> BaseObserver:
        if poll:
            return PollingObserverVFS(os.stat, scandir_pruned, polling_interval=POLL_INTERVAL)
        return Observer()

    async def _start_observer(self) -> bool:
        """Watch the folder; False if it is not there to watch."""
        inbox = self._require_inbox()
        root = str(self.root)
        handler = _Handler(root, inbox, self._ignores)
        self.stats.rescanning = False
        while True:
            if self._pinned is None:  # the first folder watched is the only one ever watched
                self._pinned = self._current_identity()
            self._identity = self._servable_identity()
            if self._identity is None:
                return False
            observer = self._new_observer(self.stats.polling)
            observer.schedule(handler, root, recursive=True, event_filter=EVENT_TYPES)
            try:
                # Native watchers add one watch per folder: a big tree takes a while.
                await anyio.to_thread.run_sync(observer.start)
            except RecursionError:
                await anyio.to_thread.run_sync(observer.stop)  # the threads it did start
                log.warning(
                    "cannot watch %s: its folders are nested too deeply for the file watcher; "
                    "looking for changes every %g s instead", root, RESCAN_INTERVAL,
                )  # fmt: skip
                self.stats.rescanning = True
                self._fingerprint = await anyio.to_thread.run_sync(tree_fingerprint, root)
                return True
            except OSError as exc:
                if self._current_identity() is None:
                    return False
                if self.stats.polling:
                    raise
                log.warning(
                    "cannot watch %s with native file events (%s); polling every %g s instead",
                    root, exc, POLL_INTERVAL,
                )  # fmt: skip
                self.stats.polling = True
                continue
            self._observer = observer
            log.info("watching %s for changes (%s)", root,
                     "polling" if self.stats.polling else "native events")  # fmt: skip
            return True

    async def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        observer.stop()
        # Joined on a worker thread: a watchdog thread may be waiting for this loop.
        await anyio.to_thread.run_sync(observer.join)
