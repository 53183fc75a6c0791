"""The watcher on a real folder: every kind of change ends in the snapshot it should."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from watchdog.events import EventsLostEvent

from corpus_cache.corpus.watch import FolderWatcher
from corpus_cache.engine.core import Engine
from support.emulator_control import Control
from support.engines import engine_on
from support.live_folder import Swaps, Told, condition, paths, text_of, watched

pytestmark = [
    pytest.mark.anyio,
    # pytest shows what the watcher's own filter hides: watchdog replacing a watch it had
    # just added, when folders are created faster than it adds them.
    pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning"),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    (root / "guide.md").write_text("# Guide\n\nThe kettle is descaled on Fridays.\n")
    (root / "notes" / "monday.md").write_text("Monday: the standup moved to 09:45.\n")
    return root


@asynccontextmanager
async def live(
    folder: Path, emulator_url: str, state: Path, **options: Any
) -> AsyncIterator[tuple[Engine, Swaps, FolderWatcher]]:
    async with engine_on(folder, emulator_url, state) as engine:
        swaps = Swaps(engine)
        async with watched(engine, **options) as watcher:
            yield engine, swaps, watcher


async def test_a_new_file_is_live_after_the_next_rescan(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (_, swaps, _w):
        (folder / "notes" / "tuesday.md").write_text("Tuesday: nothing happened.\n")
        snapshot = await swaps.until(lambda s: "notes/tuesday.md" in paths(s))
    assert text_of(snapshot, "notes/tuesday.md") == "Tuesday: nothing happened.\n"


async def test_an_edit_is_live_and_unchanged_files_are_not_read_again(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (engine, swaps, _w):
        before = engine.current.snapshot
        (folder / "guide.md").write_text("# Guide\n\nThe kettle is descaled on Mondays.\n")
        after = await swaps.until(lambda s: "Mondays" in (text_of(s, "guide.md") or ""))
    assert after.version > before.version
    assert after.get("notes/monday.md") is before.get("notes/monday.md")  # reused, not re-read


async def test_a_deleted_file_leaves_the_snapshot(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (_, swaps, _w):
        (folder / "notes" / "monday.md").unlink()
        snapshot = await swaps.until(lambda s: "notes/monday.md" not in paths(s))
    assert paths(snapshot) == {"guide.md"}


async def test_a_rename_within_the_folder_moves_the_document(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (_, swaps, _w):
        (folder / "notes" / "monday.md").rename(folder / "monday-standup.md")
        snapshot = await swaps.until(lambda s: "monday-standup.md" in paths(s))
    assert paths(snapshot) == {"guide.md", "monday-standup.md"}
    assert "09:45" in (text_of(snapshot, "monday-standup.md") or "")


async def test_files_moved_into_and_out_of_the_folder_come_and_go(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "imported.md").write_text("Imported from another folder.\n")
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (_, swaps, _w):
        (outside / "imported.md").rename(folder / "imported.md")
        await swaps.until(lambda s: "imported.md" in paths(s))
        (folder / "guide.md").rename(outside / "guide.md")
        snapshot = await swaps.until(lambda s: "guide.md" not in paths(s))
    assert paths(snapshot) == {"imported.md", "notes/monday.md"}


async def test_an_editors_atomic_save_is_an_edit_and_leaves_no_temporary_file(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (engine, swaps, _w):
        seen: list[set[str]] = []
        engine.on_swap(lambda old, new: _record(seen, new.snapshot))
        temporary = folder / ".guide.md.swp-4913"
        temporary.write_text("# Guide\n\nThe kettle is descaled daily.\n")
        os.fsync(os.open(temporary, os.O_RDONLY))
        os.replace(temporary, folder / "guide.md")
        snapshot = await swaps.until(lambda s: "daily" in (text_of(s, "guide.md") or ""))
    assert paths(snapshot) == {"guide.md", "notes/monday.md"}
    assert all("guide.md" in listed for listed in seen)  # the document never went missing


async def _record(seen: list[set[str]], snapshot: Any) -> None:
    seen.append(paths(snapshot))


async def test_a_save_is_rescanned_alone_and_a_folder_moved_in_rescans_everything(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.md").write_text("Alpha.\n")
    async with engine_on(folder, running_emulator.base_url, tmp_path / "s") as engine:
        swaps, told = Swaps(engine), Told(engine)
        async with watched(engine, told=told):
            assert told.calls == [None]  # the catch-up rescan at start looks at everything
            (folder / "guide.md").write_text("# Guide\n\nThe kettle is descaled on Mondays.\n")
            await swaps.until(lambda s: "Mondays" in (text_of(s, "guide.md") or ""))
            assert told.calls[-1] == {"guide.md"}
            staged.rename(folder / "team")  # one event for the folder, none for its files
            await swaps.until(lambda s: "team/a.md" in paths(s))
            assert told.calls[-1] is None


async def test_events_lost_rescan_everything(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with engine_on(folder, running_emulator.base_url, tmp_path / "s") as engine:
        told = Told(engine)
        async with watched(engine, told=told) as watcher:
            # What watchdog's emitter queues when the kernel's event queue overflowed.
            observer = watcher._observer
            assert observer is not None
            (emitter,) = observer.emitters
            lost = EventsLostEvent(str(folder), is_directory=True)
            observer.event_queue.put((lost, emitter.watch))
            await condition(lambda: len(told.calls) == 2)
    assert told.calls == [None, None]


async def test_polling_rescans_everything(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with engine_on(folder, running_emulator.base_url, tmp_path / "s") as engine:
        swaps, told = Swaps(engine), Told(engine)
        async with watched(engine, poll=True, told=told):
            (folder / "polled.md").write_text("Seen by polling.\n")
            await swaps.until(lambda s: "polled.md" in paths(s))
    assert told.calls
    assert all(call is None for call in told.calls)


async def test_a_refresh_told_which_files_changed_looks_at_those_alone(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with engine_on(folder, running_emulator.base_url, tmp_path / "s") as engine:
        (folder / "guide.md").write_text("# Guide\n\nDescaled on Mondays.\n")
        (folder / "notes" / "monday.md").write_text("Monday: the standup moved to 10:00.\n")
        told = await engine.refresh(changed={"guide.md"})
        assert "Mondays" in (text_of(told.snapshot, "guide.md") or "")
        assert "09:45" in (text_of(told.snapshot, "notes/monday.md") or "")  # not looked at
        everything = await engine.refresh()
    assert "10:00" in (text_of(everything.snapshot, "notes/monday.md") or "")


async def test_whole_directories_created_moved_and_deleted(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    staged = tmp_path / "staged"
    (staged / "deep").mkdir(parents=True)
    (staged / "a.md").write_text("Alpha.\n")
    (staged / "deep" / "b.md").write_text("Bravo.\n")
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (_, swaps, _w):
        (folder / "made" / "here").mkdir(parents=True)
        (folder / "made" / "here" / "c.md").write_text("Charlie.\n")
        await swaps.until(lambda s: "made/here/c.md" in paths(s))

        staged.rename(folder / "team")
        await swaps.until(lambda s: {"team/a.md", "team/deep/b.md"} <= paths(s))

        (folder / "team").rename(folder / "people")
        moved = await swaps.until(lambda s: "people/deep/b.md" in paths(s))
        assert not any(p.startswith("team/") for p in paths(moved))

        (folder / "people" / "deep" / "d.md").write_text("Delta, in a moved folder.\n")
        await swaps.until(lambda s: "people/deep/d.md" in paths(s))

        shutil.rmtree(folder / "people")
        snapshot = await swaps.until(lambda s: not any(p.startswith("people/") for p in paths(s)))
    assert paths(snapshot) == {"guide.md", "made/here/c.md", "notes/monday.md"}


async def test_editing_gitignore_reevaluates_what_is_included(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (_, swaps, _w):
        (folder / ".gitignore").write_text("notes/\n")
        ignored = await swaps.until(lambda s: "notes/monday.md" not in paths(s))
        assert any(s.path == "notes/" and "gitignore" in s.reason for s in ignored.skipped)
        (folder / ".gitignore").write_text("# nothing ignored\n")
        snapshot = await swaps.until(lambda s: "notes/monday.md" in paths(s))
    assert paths(snapshot) == {"guide.md", "notes/monday.md"}


async def test_the_folder_disappearing_keeps_the_last_snapshot_until_it_comes_back(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    away = tmp_path / "away"
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (engine, swaps, watcher):
        last = engine.current.snapshot
        os.rename(folder, away)
        await condition(lambda: watcher.stats.folder_missing)
        assert engine.current.snapshot.documents == last.documents  # still served

        os.rename(away, folder)
        (folder / "restored.md").write_text("Back where it was.\n")
        await swaps.until(lambda s: "restored.md" in paths(s))
        assert not watcher.stats.folder_missing

        (folder / "after.md").write_text("Written after the folder came back.\n")
        await swaps.until(lambda s: "after.md" in paths(s))  # watched again


async def test_a_folder_made_anew_at_the_path_is_not_served(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    # The folder served is pinned (corpus/beneath.py): another one at its path, even one
    # made by deleting and recreating it, is another folder. The tools say so (tested in
    # tests/security/test_sec_paths.py) and a restart serves it.
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (engine, _s, watcher):
        last = engine.current.snapshot
        shutil.rmtree(folder)
        await condition(lambda: watcher.stats.folder_missing)
        os.mkdir(folder)
        (folder / "restored.md").write_text("Restored from a backup.\n")
        await condition(lambda: watcher.stats.folder_replaced)
        assert engine.current.snapshot.documents == last.documents
        assert "was replaced" in (engine.folder_problem() or "")


async def test_a_folder_replaced_by_another_is_not_served_until_the_original_is_back(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    replacement = tmp_path / "replacement"
    replacement.mkdir()
    (replacement / "fresh.md").write_text("A fresh copy of the corpus.\n")
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (engine, swaps, watcher):
        last = engine.current.snapshot
        os.rename(folder, tmp_path / "old-corpus")
        os.rename(replacement, folder)
        await condition(lambda: watcher.stats.folder_replaced)
        assert engine.current.snapshot.documents == last.documents
        os.rename(folder, replacement)
        os.rename(tmp_path / "old-corpus", folder)
        (folder / "later.md").write_text("Saved into the original.\n")
        snapshot = await swaps.until(lambda s: "later.md" in paths(s))
    assert "fresh.md" not in paths(snapshot)


async def test_a_checkout_of_thousands_of_events_is_one_rebuild_and_git_internals_none(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    def checkout() -> None:
        # About 4,000 events: 100 documents written 10 times over, 1,000 git objects.
        (folder / "src").mkdir()
        (folder / ".git" / "objects").mkdir(parents=True)
        for round_ in range(10):
            for n in range(100):
                path = folder / "src" / f"module_{n:03d}.md"
                path.write_text(f"Module {n} does one thing (revision {round_}).\n")
                (folder / ".git" / "objects" / f"{round_}{n:03d}").write_bytes(b"x" * 64)

    async with live(folder, running_emulator.base_url, tmp_path / "s", debounce=0.3) as (
        engine, swaps, watcher,
    ):  # fmt: skip
        swaps_before, events_before = swaps.count, watcher.stats.events
        await anyio.to_thread.run_sync(checkout)
        snapshot = await swaps.until(lambda s: len(s.documents) == 102)
        assert swaps.count - swaps_before == 1
        assert watcher.stats.events - events_before == 101  # src/ and its files; no .git
        assert "revision 9" in (text_of(snapshot, "src/module_042.md") or "")

        for n in range(50):
            (folder / ".git" / "objects" / f"pack-{n}").write_bytes(b"y")
        (folder / "node_modules" / "pkg").mkdir(parents=True)
        (folder / "node_modules" / "pkg" / "README.md").write_text("not a document\n")
        (folder / "sentinel.md").write_text("Written last.\n")
        await swaps.until(lambda s: "sentinel.md" in paths(s))
        assert watcher.stats.events - events_before == 102  # only the sentinel counted
        assert "node_modules/pkg/README.md" not in paths(engine.current.snapshot)


async def test_a_burst_of_saves_while_the_loop_is_busy_is_one_rebuild(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s", debounce=0.015) as (
        _, swaps, watcher,
    ):  # fmt: skip
        rebuilds = []
        for burst in range(3):
            before = watcher.stats.bursts
            # Saved from the event loop itself, which then stays busy (as in a long rebuild):
            # the watcher's thread may have heard the first save, and waits for the loop.
            for n in range(100):
                with (folder / f"saved-{burst}-{n:03d}.md").open("w") as handle:
                    handle.write(f"Saved {n} in burst {burst}.\n")
                    handle.flush()
                    os.fsync(handle.fileno())
            time.sleep(0.1)  # noqa: ASYNC251 (the loop busy on purpose)
            await swaps.until(lambda s, b=burst: len(s.documents) == 102 + 100 * b)
            await anyio.sleep(watcher.max_delay + watcher.debounce)  # time for a straggler
            rebuilds.append(watcher.stats.bursts - before)
    assert rebuilds == [1, 1, 1]


async def test_polling_sees_creates_edits_and_deletes(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s", poll=True) as (
        _, swaps, watcher,
    ):  # fmt: skip
        assert watcher.stats.polling
        (folder / "polled.md").write_text("Seen by polling.\n")
        (folder / "guide.md").write_text("# Guide\n\nEdited, and polled.\n")
        (folder / "notes" / "monday.md").unlink()
        snapshot = await swaps.until(lambda s: paths(s) == {"guide.md", "polled.md"})
    assert "polled" in (text_of(snapshot, "guide.md") or "")


async def test_a_refresh_that_fails_is_retried(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (_, swaps, watcher):
        emulator.fault(count=1, status=529, error_type="overloaded_error", path="/v1/messages*")
        (folder / "new.md").write_text("Counted on the second try.\n")
        await swaps.until(lambda s: "new.md" in paths(s))
    assert watcher.stats.failures == 1


async def test_starting_to_watch_an_unchanged_folder_makes_no_new_snapshot(
    folder: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with live(folder, running_emulator.base_url, tmp_path / "s") as (engine, swaps, w):
        assert w.stats.refreshes >= 1  # the catch-up rescan ran, and found nothing new
        assert engine.current.snapshot.version == 1
        assert swaps.count == 0
        after = await engine.refresh()  # as the refresh tool does
        assert after.snapshot.version == 1
        (folder / "guide.md").write_text("# Guide\n\nThe kettle is descaled on Mondays.\n")
        snapshot = await swaps.until(lambda s: "Mondays" in (text_of(s, "guide.md") or ""))
    assert snapshot.version == 2
