"""The ledger under faults: locked by another process, on a full disk, read-only, corrupt.

Every fault is real: a lock held by another process (`BEGIN EXCLUSIVE` in a child), a small
tmpfs filled to the last byte, files made immutable (`chattr +i`: root ignores permission
bits, not that) or a read-only bind mount, garbage written over the file's header. Each
goes through the real paths: a real MCP client calling `ask` in memory, a save reaching
the watcher. The server stays up, a paid answer is returned with a note saying where its
row waits, and the row is added to the ledger exactly once when the ledger is writable."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.types import CallToolResult, TextContent

from corpus_cache.accounting.journal import parse_rows
from corpus_cache.accounting.ledger import Ledger, RequestRecord
from corpus_cache.emulator import RunningEmulator
from corpus_cache.errors import LedgerUnavailableError
from corpus_cache.models.pricing import Usage
from support.corpus_fixture import write_corpus
from support.live_folder import Swaps, text_of, watched
from support.mcp_session import serving

pytestmark = pytest.mark.anyio

QUESTION = "When are production deploys frozen?"


# --- real faults ---------------------------------------------------------------------


@contextmanager
def locked_by_another_process(ledger: Path) -> Iterator[None]:
    """Another process holds the ledger's write lock (`BEGIN EXCLUSIVE`) until the block ends."""
    locker = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
            str(ledger),
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert locker.stdout is not None
    assert locker.stdin is not None
    try:
        assert locker.stdout.readline().strip() == "locked"
        yield
    finally:
        locker.stdin.close()  # its read ends, it exits, the lock goes with it
        locker.wait(timeout=30)


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (root only: skipped where mounting is refused)."""
    path.mkdir(parents=True)
    mounted = run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        run("umount", "-l", str(path))


def fill(disk: Path, name: str = "filler") -> Path:
    """Write a file until the disk has no byte left; the file, to delete to make room."""
    filler = disk / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1):  # then the last partial page, byte by byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


@contextmanager
def read_only_bind(source: Path, target: Path) -> Iterator[Path]:
    """`source` mounted read-only at `target`: nothing under it can be written, by root
    either; `make_writable` lifts it."""
    target.mkdir(parents=True)
    if run("mount", "--bind", str(source), str(target)).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        assert run("mount", "-o", "remount,bind,ro", str(target)).returncode == 0
        yield target
    finally:
        run("umount", "-l", str(target))


def make_writable(target: Path) -> None:
    assert run("mount", "-o", "remount,bind,rw", str(target)).returncode == 0


@contextmanager
def immutable(*files: Path) -> Iterator[None]:
    """`chattr +i` (ext4 and others): no write reaches the files, root's neither."""
    done = run("chattr", "+i", *map(str, files))
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.strip()}")
    try:
        yield
    finally:
        run("chattr", "-i", *map(str, files))


# --- what the ledger holds -----------------------------------------------------------


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def ask(mcp: Client) -> dict[str, Any]:
    result = await mcp.call_tool("ask", {"question": QUESTION})
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    out = dict(result.structured_content)
    out["text"] = text(result)
    return out


def ask_rows(ledger: Path) -> list[str]:
    """The message id of every ask row in the ledger file, read by another connection."""
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT message_id FROM requests WHERE kind = 'ask' ORDER BY id")
        return [row[0] for row in rows]


def journal_of(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".pending.jsonl")


def journaled(ledger: Path) -> list[dict[str, Any]]:
    path = journal_of(ledger)
    return parse_rows(path.read_bytes()) if path.exists() else []


def no_transaction_left_open(ledger: Path) -> bool:
    """Another connection takes the write lock at once: the server holds no transaction."""
    with sqlite3.connect(ledger, timeout=0, isolation_level=None) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    return True


# --- the tests -----------------------------------------------------------------------


async def test_a_ledger_locked_by_another_process_through_saves_and_asks_loses_nothing(
    tmp_path: Path, running_emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    ledger = state / "ledger.sqlite3"
    caplog.set_level(logging.WARNING)
    async with serving(corpus, running_emulator.base_url, state) as (mcp, engine):
        swaps = Swaps(engine)
        async with watched(engine):
            with locked_by_another_process(ledger):
                # A save: its new token count cannot be stored; the watcher must go on.
                with (corpus / "deploys.md").open("a") as doc:
                    doc.write("\nSaved while the ledger was locked.\n")
                await swaps.until(lambda s: "locked" in (text_of(s, "deploys.md") or ""))
                first = await ask(mcp)
                note = first["ledger_note"]
                assert note is not None
                assert "locked by another process" in note
                assert str(journal_of(ledger)) in note
                assert str(journal_of(ledger)) in first["text"]
                assert [r["message_id"] for r in journaled(ledger)] == first["message_ids"]
                # The spend counts (for the daily cap too) while its row waits.
                assert engine.totals().cost_usd == pytest.approx(first["cost_usd"], abs=1e-6)
                status = await mcp.call_tool("cache_status", {})
                assert not status.is_error
                assert "could not be recorded" in text(status)
                refreshed = await mcp.call_tool("refresh", {})
                assert not refreshed.is_error, text(refreshed)
            assert any("locked by another process" in r.getMessage() for r in caplog.records)

            # The lock is gone: the next write adds the waiting row, once, and commits.
            with (corpus / "deploys.md").open("a") as doc:
                doc.write("\nSaved after the lock went.\n")
            await swaps.until(lambda s: "went" in (text_of(s, "deploys.md") or ""))
            second = await ask(mcp)
            assert second["ledger_note"] is None
            assert ask_rows(ledger) == first["message_ids"] + second["message_ids"]
            assert journaled(ledger) == []
            assert no_transaction_left_open(ledger)
            spent = first["cost_usd"] + second["cost_usd"]
            assert engine.totals().cost_usd == pytest.approx(spent, abs=1e-5)


async def test_a_failed_token_count_store_leaves_no_transaction_open_for_later_answers(
    tmp_path: Path, running_emulator: RunningEmulator
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    ledger = state / "ledger.sqlite3"
    async with serving(corpus, running_emulator.base_url, state) as (mcp, engine):
        with locked_by_another_process(ledger):
            (corpus / "new.md").write_text("# New\n\nCounted while the ledger was locked.\n")
            refreshed = await mcp.call_tool("refresh", {})
            assert not refreshed.is_error, text(refreshed)
        answers = [await ask(mcp) for _ in range(3)]
        assert all(a["ledger_note"] is None for a in answers)
        # Committed: another connection sees them, and can write at once.
        assert ask_rows(ledger) == [m for a in answers for m in a["message_ids"]]
        assert no_transaction_left_open(ledger)
        # The count that could not be stored is stored at the next refresh that counts it
        # (a refresh that finds nothing changed counts nothing).
        engine.counter._recent.clear()
        (corpus / "newer.md").write_text("# Newer\n\nCounted once the ledger was free.\n")
        await mcp.call_tool("refresh", {})
        with sqlite3.connect(ledger) as db:
            (counts,) = db.execute("SELECT COUNT(*) FROM token_counts").fetchone()
        assert counts == len(engine.current.snapshot.documents)


async def test_a_full_disk_returns_the_paid_answer_and_journals_its_row_until_there_is_room(
    tmp_path: Path, running_emulator: RunningEmulator
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    with small_disk(tmp_path / "disk", "4m") as state:
        ledger = state / "ledger.sqlite3"
        async with serving(corpus, running_emulator.base_url, state) as (mcp, engine):
            swaps = Swaps(engine)
            async with watched(engine):
                filler = fill(state)
                with (corpus / "oncall.md").open("a") as doc:
                    doc.write("\nSaved with the disk full.\n")
                await swaps.until(lambda s: "disk full" in (text_of(s, "oncall.md") or ""))
                first = await ask(mcp)
                assert first["ledger_note"] is not None
                assert "the disk is full" in first["ledger_note"]
                assert "ledger could not record this answer" in first["text"]
                assert [r["message_id"] for r in journaled(ledger)] == first["message_ids"]
                # The reserve given up for the journal made room: fill that too.
                more = fill(state, "more")
                warmed = await mcp.call_tool("refresh", {"warm": True})
                assert not warmed.is_error, text(warmed)
                assert "the ledger could not record the warming" in text(warmed)

                filler.unlink()
                more.unlink()
                second = await ask(mcp)
                assert second["ledger_note"] is None
                assert ask_rows(ledger) == first["message_ids"] + second["message_ids"]
                assert [row.kind for row in engine.ledger.history()] == ["ask", "warm", "ask"]
                assert journaled(ledger) == []


async def test_immutable_ledger_files_send_rows_to_the_journal_until_they_can_be_written(
    tmp_path: Path, running_emulator: RunningEmulator
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    ledger = state / "ledger.sqlite3"
    async with serving(corpus, running_emulator.base_url, state) as (mcp, _):
        wal = ledger.with_name(ledger.name + "-wal")
        with immutable(ledger, wal):  # not -shm: SQLite maps it, and a write would SIGBUS
            first = await ask(mcp)
            assert first["ledger_note"] is not None
            assert str(journal_of(ledger)) in first["ledger_note"]
        second = await ask(mcp)
        assert second["ledger_note"] is None
        assert ask_rows(ledger) == first["message_ids"] + second["message_ids"]
        assert journaled(ledger) == []


async def test_a_read_only_state_folder_keeps_rows_in_memory_and_the_log_until_it_is_writable(
    tmp_path: Path, running_emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (tmp_path / "real-state").mkdir()
    Ledger(tmp_path / "real-state" / "ledger.sqlite3").close()
    caplog.set_level(logging.WARNING)
    with read_only_bind(tmp_path / "real-state", tmp_path / "state") as state:
        ledger = state / "ledger.sqlite3"
        async with serving(corpus, running_emulator.base_url, state) as (mcp, engine):
            first = await ask(mcp)
            note = first["ledger_note"]
            assert note is not None
            assert "kept in memory" in note
            # Neither the ledger nor its journal can hold it: the log has the whole row.
            logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert any(first["message_ids"][0] in message for message in logged)
            make_writable(state)
            second = await ask(mcp)
            assert second["ledger_note"] is None
            assert ask_rows(ledger) == first["message_ids"] + second["message_ids"]
            assert engine.ledger.waiting == 0


async def test_a_corrupt_ledger_at_start_serves_and_journals_until_it_is_moved_aside(
    tmp_path: Path, running_emulator: RunningEmulator
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    ledger = state / "ledger.sqlite3"
    earlier = Ledger(ledger)
    earlier.record(RequestRecord("ask", str(corpus), "m", "anthropic", "ok", cost_usd=0.5))
    earlier.close()
    with ledger.open("r+b") as f:
        f.write(os.urandom(4096))  # the header and the schema page
    async with serving(corpus, running_emulator.base_url, state) as (mcp, _):
        first = await ask(mcp)
        note = first["ledger_note"]
        assert note is not None
        assert "not a readable database" in note
        assert "move the file aside" in note
        status = await mcp.call_tool("cache_status", {})
        assert not status.is_error
        assert "cannot be read" in text(status)

        shutil.move(ledger, state / "ledger.corrupt")
        second = await ask(mcp)
        assert second["ledger_note"] is None
        assert ask_rows(ledger) == first["message_ids"] + second["message_ids"]
        assert journaled(ledger) == []


def test_a_journal_replayed_twice_adds_each_row_once(tmp_path: Path) -> None:
    """A crash between the replay's commit and the journal's emptying leaves rows that are
    already in the ledger in the journal: the next replay adds nothing twice."""
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    row = RequestRecord("ask", "/c", "m", "anthropic", "ok", Usage(input_tokens=7), 0.25)
    with locked_by_another_process(path):
        recorded = ledger.record(row)
    assert recorded.unrecorded is not None
    left_behind = journal_of(path).read_bytes()
    ledger.record(RequestRecord("ask", "/c", "m", "anthropic", "ok", cost_usd=0.5))
    ledger.close()
    assert journaled(path) == []
    journal_of(path).write_bytes(left_behind)  # as if killed before the emptying

    again = Ledger(path)
    try:
        assert again.totals("/c").cost_usd == pytest.approx(0.75)
        assert again.totals("/c").requests == 2
        assert journaled(path) == []
    finally:
        again.close()


@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"row_key": st.uuids().map(lambda u: u.hex), "cost_usd": st.floats(0, 10)}
        ),
        max_size=8,
    ),
    cut=st.integers(min_value=0),
)
def test_a_journal_torn_anywhere_gives_back_the_rows_written_whole(
    rows: list[dict[str, Any]], cut: int
) -> None:
    data = b"".join(json.dumps(row).encode() + b"\n" for row in rows)
    torn = data[: cut % (len(data) + 1)]
    whole = torn.count(b"\n")
    parsed = parse_rows(torn)
    assert parsed == rows[: len(parsed)]
    assert len(parsed) in (whole, whole + 1)  # cut just before its newline, a row is whole


def test_no_storage_fault_escapes_the_ledger_as_a_sqlite_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    path.write_bytes(os.urandom(8192))
    ledger = Ledger(path)  # opens
    try:
        assert ledger.store_token_counts("m", "anthropic", {"k": 3}) is False
        assert ledger.token_counts("m", "anthropic", ["k"]) == {}
        kept = ledger.record(RequestRecord("ask", "/c", "m", "anthropic", "ok", cost_usd=1.0))
        assert kept.unrecorded is not None
        with pytest.raises(LedgerUnavailableError, match="not a readable database"):
            ledger.totals()
    finally:
        ledger.close()
