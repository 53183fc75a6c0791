"""Folder faults: files that cannot be read, vanish or change between listing and reading,
text in other encodings, a 1 GB file, many files, deep nesting, and names that cannot be
shown on one line. Each is left out or read by a stated rule, with a reason the user can
read, through the scan and through the MCP tools; the server and the watcher keep going."""

from __future__ import annotations

import codecs
import json
import os
import resource
import socket
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.types import CallToolResult, TextContent

from corpus_cache.corpus.scan import ScanOptions, scan
from support.emulator_control import Control
from support.faulty_folders import (
    before_opening,
    make_deep,
    opened_paths,
    reads_any_file,
    run_unprivileged,
    scan_without_hanging,
    scratch_folder,
    write,
)
from support.live_folder import Seen, Swaps, condition, paths, text_of, watched
from support.mcp_session import serving

pytestmark = pytest.mark.anyio

FILES = int(os.environ.get("CORPUS_CACHE_FAULT_FILES", "3000"))
GIB = 1 << 30


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    with scratch_folder(tmp_path) as folder:
        yield folder


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text(result)
    out: dict[str, Any] | None = result.structured_content
    assert out is not None
    return out


def reasons(root: Path, **options: Any) -> dict[str, str]:
    return {s.path: s.reason for s in scan(root, ScanOptions(**options)).skipped}


# --- permission denied ----------------------------------------------------------------
# Root reads any file whatever its mode: as root, these tests run themselves again in a
# child pytest without that privilege, and pass only if they passed there.

UNPRIVILEGED = (
    "test_unreadable_files_and_folders_are_left_out_with_the_reason_and_the_rest_is_served",
    "test_a_file_that_becomes_unreadable_mid_refresh_is_left_out_until_it_is_readable_again",
)


@pytest.fixture(scope="module")
def unprivileged_outcomes() -> dict[str, str]:
    return run_unprivileged(UNPRIVILEGED)


def passed_unprivileged(request: pytest.FixtureRequest) -> bool:
    """False if this process meets "Permission denied": the test runs here. Otherwise True
    once the test passed in the unprivileged child, and failed if it did not."""
    if not reads_any_file():
        return False
    outcomes: dict[str, str] = request.getfixturevalue("unprivileged_outcomes")
    outcome = outcomes.get(request.node.name, "did not run")
    assert outcome == "passed", f"without the privilege to read any file: {outcome}"
    return True


async def test_unreadable_files_and_folders_are_left_out_with_the_reason_and_the_rest_is_served(
    request: pytest.FixtureRequest, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    if passed_unprivileged(request):
        return
    corpus = tmp_path / "corpus"
    write(corpus, "open.md", "The kettle is descaled on Fridays.\n")
    locked = write(corpus, "locked.md", "Salaries are reviewed in March.\n")
    write(corpus, "vault/plan.md", "The plan is in the vault.\n")
    rules = write(corpus, "notes/.gitignore", "*.tmp\n")
    write(corpus, "notes/draft.tmp", "A draft the rules would have left out.\n")
    for path in (locked, rules, corpus / "vault"):
        path.chmod(0)
    try:
        assert reasons(corpus) == {
            "locked.md": "cannot be read: Permission denied",
            "notes/.gitignore": "cannot be read: Permission denied; its rules are not applied",
            "vault": "folder cannot be read: Permission denied",
        }
        async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
            listing = structured(await mcp.call_tool("list_documents", {}))
            refused = await mcp.call_tool("read_document", {"path": "locked.md"})
            found = structured(await mcp.call_tool("search", {"query": "kettle descaled"}))
            answer = structured(
                await mcp.call_tool("ask", {"question": "When is the kettle descaled?"})
            )
    finally:
        for path in (locked, rules, corpus / "vault"):
            path.chmod(0o755)
    assert [d["path"] for d in listing["documents"]] == ["notes/draft.tmp", "open.md"]
    assert listing["skipped"] == {"cannot be read": 2, "folder cannot be read": 1}
    assert refused.is_error
    assert text(refused).endswith("locked.md is not served: cannot be read: Permission denied")
    assert found["hits"][0]["path"] == "open.md"
    assert {c["path"] for c in answer["citations"]} <= {"open.md", "notes/draft.tmp"}


async def test_a_file_that_becomes_unreadable_mid_refresh_is_left_out_until_it_is_readable_again(
    request: pytest.FixtureRequest, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    if passed_unprivileged(request):
        return
    corpus = tmp_path / "corpus"
    write(corpus, "guide.md", "The guide.\n")
    staged = write(tmp_path, "staged.md", "Locked between listing and reading.\n")
    arriving = (corpus / "arriving.md").resolve()
    async with (
        serving(corpus, running_emulator.base_url, tmp_path / "s") as (_, engine),
        watched(engine) as watcher,
    ):
        seen, swaps = Seen(engine), Swaps(engine)
        with before_opening(arriving, lambda: arriving.chmod(0)):
            staged.rename(arriving)  # no open: the refresh's is the first
            await swaps.until(lambda s: "arriving.md" in {x.path for x in s.skipped})
        arriving.chmod(0o644)
        await swaps.until(lambda s: "arriving.md" in paths(s))
        write(corpus, "later.md", "The watcher kept going.\n")
        await swaps.until(lambda s: "later.md" in paths(s))
    assert ("arriving.md", "cannot be read: Permission denied") in seen.left_out()
    assert watcher.stats.failures == 0


# --- files that change between listing and reading ------------------------------------


def test_a_file_that_vanishes_between_listing_and_reading_is_left_out_with_the_reason(
    tmp_path: Path,
) -> None:
    for name in ("a.md", "b.md", "c.md"):
        write(tmp_path, name, f"{name} is here.\n")
    doomed = tmp_path / "b.md"
    with before_opening(doomed, doomed.unlink):
        result = scan(tmp_path)
    assert [d.path for d in result.documents] == ["a.md", "c.md"]
    assert [(s.path, s.reason) for s in result.skipped] == [
        ("b.md", "vanished before it could be read")
    ]


def test_a_file_replaced_by_a_folder_or_a_named_pipe_mid_scan_is_left_out_without_blocking(
    tmp_path: Path,
) -> None:
    write(tmp_path, "kept.md")
    folder = write(tmp_path, "folder.md")
    pipe = write(tmp_path, "pipe.md")

    def to_folder() -> None:
        folder.unlink()
        folder.mkdir()

    def to_pipe() -> None:
        pipe.unlink()
        os.mkfifo(pipe)

    with before_opening(folder, to_folder), before_opening(pipe, to_pipe):
        result = scan_without_hanging(tmp_path, pipes=[pipe])
    assert [d.path for d in result.documents] == ["kept.md"]
    assert {s.path: s.reason for s in result.skipped} == {
        "folder.md": "not a regular file (a folder)",
        "pipe.md": "not a regular file (a named pipe)",
    }


def test_named_pipes_and_sockets_in_the_folder_never_block_the_scan(tmp_path: Path) -> None:
    write(tmp_path, "doc.md")
    os.mkfifo(tmp_path / "pipe.md")
    os.mkfifo(tmp_path / ".gitignore")  # read before anything else in its folder
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "agent.sock"))
        result = scan_without_hanging(
            tmp_path, pipes=[tmp_path / "pipe.md", tmp_path / ".gitignore"]
        )
    assert [d.path for d in result.documents] == ["doc.md"]
    assert {s.path: s.reason for s in result.skipped} == {
        ".gitignore": "not a regular file (a named pipe); its rules are not applied",
        "agent.sock": "not a regular file (a socket)",
        "pipe.md": "not a regular file (a named pipe)",
    }


def test_a_file_replaced_by_a_symlink_mid_scan_is_not_followed_out_of_the_corpus(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus"
    notes = write(corpus, "notes.md", "Ordinary notes.\n")
    outside = write(tmp_path, "private.txt", "The root password is hunter2.\n")

    def to_link() -> None:
        notes.unlink()
        notes.symlink_to(outside)

    with before_opening(notes, to_link):
        result = scan(corpus)
    assert result.documents == ()
    assert [(s.path, s.reason) for s in result.skipped] == [
        ("notes.md", "replaced by a symlink before it could be read")
    ]


def test_a_file_that_grows_while_being_read_is_read_no_further_than_the_limit(
    tmp_path: Path,
) -> None:
    log = write(tmp_path, "log.md", "started\n" * 50)
    notes = write(tmp_path, "notes.md", "first line\n")

    def grow(path: Path, more: str) -> None:
        with path.open("a") as appending:
            appending.write(more)

    with (
        before_opening(log, lambda: grow(log, "more\n" * 1_000)),
        before_opening(notes, lambda: grow(notes, "second line\n")),
    ):
        first = scan(tmp_path, ScanOptions(max_file_bytes=1_000))
    assert [(s.path, s.reason) for s in first.skipped] == [
        ("log.md", "grew past the 1,000-byte limit while being read")
    ]
    assert first.documents[0].text == "first line\nsecond line\n"
    # Read mid-growth: the next rescan reads it again rather than trusting what it saw.
    again = scan(tmp_path, previous={d.path: d for d in first.documents})
    assert again.reused == 0


async def test_a_file_vanishing_mid_refresh_is_left_out_then_forgotten_and_the_watcher_keeps_going(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write(corpus, "guide.md", "The guide.\n")
    staged = write(tmp_path, "staged.md", "Here and gone.\n")
    brief = (corpus / "brief.md").resolve()
    async with (
        serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, engine),
        watched(engine) as watcher,
    ):
        seen, swaps = Seen(engine), Swaps(engine)
        with before_opening(brief, brief.unlink):
            staged.rename(brief)
            await condition(
                lambda: ("brief.md", "vanished before it could be read") in seen.left_out()
            )
        await swaps.until(lambda s: "brief.md" not in {x.path for x in s.skipped})
        write(corpus, "later.md", "The watcher kept going.\n")
        await swaps.until(lambda s: "later.md" in paths(s))
        listing = structured(await mcp.call_tool("list_documents", {}))
    assert [d["path"] for d in listing["documents"]] == ["guide.md", "later.md"]
    assert watcher.stats.failures == 0


async def test_files_created_and_deleted_in_a_tight_loop_while_refreshing_never_stop_the_watcher(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write(corpus, "guide.md", "The guide.\n")
    async with (
        serving(corpus, running_emulator.base_url, tmp_path / "s") as (_, engine),
        watched(engine, debounce=0.0) as watcher,
    ):
        swaps, seen = Swaps(engine), Seen(engine)

        def churn() -> None:
            deadline = time.monotonic() + 1.0
            n = 0
            while time.monotonic() < deadline:
                path = corpus / f"flicker-{n % 7}.md"
                path.write_text(f"flicker {n}\n")
                path.unlink()
                n += 1

        await anyio.to_thread.run_sync(churn)
        during = len(seen.snapshots)
        write(corpus, "after.md", "Still watching.\n")
        final = await swaps.until(lambda s: "after.md" in paths(s))
    assert paths(final) == {"guide.md", "after.md"}
    assert watcher.stats.failures == 0
    assert during >= 2, "the watcher should have refreshed while the files came and went"


# --- encodings ------------------------------------------------------------------------

WINDOWS = "read as Windows-1252 (Latin-1): not UTF-8"
ENCODED = [
    ("latin1.txt", "Le café est prêt à midi.\n".encode("latin-1"),
     "Le café est prêt à midi.\n", WINDOWS),
    ("cp1252.txt", "He said \u201cship it\u201d \u2014 for \u20ac5.\n".encode("cp1252"),
     "He said \u201cship it\u201d \u2014 for \u20ac5.\n", WINDOWS),
    ("utf16.txt", "\ufeffWörterbuch entries.\n".encode("utf-16-le"),
     "Wörterbuch entries.\n", "read as UTF-16"),
    ("utf16be.txt", "\ufeffWörterbuch entries.\n".encode("utf-16-be"),
     "Wörterbuch entries.\n", "read as UTF-16"),
    ("utf32.txt", "\ufeffA wide file.\n".encode("utf-32-le"), "A wide file.\n", "read as UTF-32"),
    ("bom.md", "\ufeff# Title with a BOM\n".encode(), "# Title with a BOM\n", ""),
    ("mixed.md", "naïve café ".encode() + b"\xff\xfe" + " and ünïcode.\n".encode(),
     "naïve café \ufffd\ufffd and ünïcode.\n",
     "UTF-8 with 2 bytes that are not UTF-8 replaced by U+FFFD"),
    ("sjis.txt", "東京の天気は晴れです。\n".encode("shift_jis"),
     "東京の天気は晴れです。\n", "read as Shift-JIS: not UTF-8"),
]  # fmt: skip
CANNOT_TELL = "not UTF-8, and not in an encoding that can be told for certain: save it as UTF-8"
NOT_TEXT = [
    ("cp1251.txt", "Привет, как дела?\n".encode("cp1251"), CANNOT_TELL),
    ("gbk.txt", "中文文本，这是一个测试。\n".encode("gbk"), CANNOT_TELL),
    ("nobom16.txt", "no mark\n".encode("utf-16-le"), "binary content"),
    ("marked.txt", codecs.BOM_UTF16_LE + bytes(range(256)) * 8, "binary content"),
    ("controls.txt", bytes(range(1, 32)) * 20 + "é".encode("latin-1"), "binary content"),
]


def test_text_in_other_encodings_is_read_by_a_stated_policy_and_noted(tmp_path: Path) -> None:
    for name, raw, _, _ in ENCODED:
        write(tmp_path, name, raw)
    result = scan(tmp_path)
    assert result.skipped == ()
    read = {d.path: (d.text, d.encoding_note) for d in result.documents}
    assert read == {name: (decoded, note) for name, _, decoded, note in ENCODED}


def test_bytes_whose_encoding_cannot_be_told_are_left_out_with_advice(tmp_path: Path) -> None:
    for name, raw, _ in NOT_TEXT:
        write(tmp_path, name, raw)
    assert reasons(tmp_path) == {name: reason for name, raw, reason in NOT_TEXT}


async def test_documents_in_other_encodings_are_searched_read_and_cited_with_a_note(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    for name, raw, _, _ in ENCODED:
        write(corpus, name, raw)
    write(corpus, "gbk.txt", "中文文本，这是一个测试。\n".encode("gbk"))
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        listing = await mcp.call_tool("list_documents", {})
        found = structured(await mcp.call_tool("search", {"query": "café prêt"}))
        japanese = await mcp.call_tool("read_document", {"path": "sjis.txt"})
        answer = structured(await mcp.call_tool("ask", {"question": "When is the café ready?"}))
    notes = {d["path"]: d["encoding_note"] for d in structured(listing)["documents"]}
    assert notes["latin1.txt"] == WINDOWS
    assert notes["bom.md"] is None
    assert "latin1.txt  (" in text(listing)
    assert "; read as Windows-1252" in text(listing)
    assert structured(listing)["skipped"] == {CANNOT_TELL.split(":")[0]: 1}
    assert found["hits"][0]["path"] == "latin1.txt"
    assert structured(japanese)["text"] == "東京の天気は晴れです。\n"
    assert text(japanese).endswith("[sjis.txt: lines 1-1 of 1; read as Shift-JIS: not UTF-8]")
    assert any(c["path"] == "latin1.txt" for c in answer["citations"])


# --- a 1 GB file ----------------------------------------------------------------------


async def test_a_one_gigabyte_file_is_left_out_by_its_size_without_being_read(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = (tmp_path / "corpus").resolve()
    write(corpus, "small.md", "A small file about the budget.\n")
    for name in ("huge.log.md", "huge.pdf"):
        os.truncate(write(corpus, name, b""), GIB)  # sparse: no disk, no time
    tracemalloc.start()
    try:
        with opened_paths() as opened:
            result = scan(corpus)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(corpus / "huge.log.md") not in opened
    assert str(corpus / "huge.pdf") not in opened
    assert peak < 4 * 1024 * 1024, f"the scan held {peak:,} bytes at its peak"
    assert {s.path: s.reason for s in result.skipped} == {
        "huge.log.md": "larger than the 2,097,152-byte limit (1,073,741,824 bytes); "
        "raise it with --max-file-bytes or CORPUS_CACHE_MAX_FILE_BYTES",
        "huge.pdf": "larger than the 52,428,800-byte limit for PDF and DOCX (1,073,741,824 bytes)",
    }
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        listing = structured(await mcp.call_tool("list_documents", {}))
        refused = await mcp.call_tool("read_document", {"path": "huge.log.md"})
        answer = structured(await mcp.call_tool("ask", {"question": "What is the budget?"}))
    assert listing["skipped"] == {
        "larger than the 2,097,152-byte limit": 1,
        "larger than the 52,428,800-byte limit for PDF and DOCX": 1,
    }
    assert "--max-file-bytes" in text(refused)
    assert {c["path"] for c in answer["citations"]} == {"small.md"}


# --- many files -----------------------------------------------------------------------


async def test_many_files_are_scanned_in_time_linear_in_their_number_and_served(
    running_emulator: Any, emulator: Control, scratch: Path
) -> None:
    """CORPUS_CACHE_FAULT_FILES sets how many (default 3,000); run with -s for the figures."""
    corpus = scratch / "corpus"
    for n in range(FILES):
        folder = corpus / f"part{n // 1000:03d}"
        if n % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"note{n:06d}.md").write_text(f"Note {n}: the code word is w{n:06d}x.\n")
    started = time.perf_counter()
    first = scan(corpus)
    scanned = time.perf_counter() - started
    started = time.perf_counter()
    again = scan(corpus, previous={d.path: d for d in first.documents})
    rescanned = time.perf_counter() - started
    assert (len(first.documents), again.reused) == (FILES, FILES)
    assert scanned < 1.0 + FILES / 1000  # about 30 µs a file on an idle machine: a wide margin
    last = FILES - 1
    started = time.perf_counter()
    async with serving(corpus, running_emulator.base_url, scratch / "s") as (mcp, engine):
        indexed = time.perf_counter() - started
        listing = structured(await mcp.call_tool("list_documents", {"limit": 1000}))
        found = structured(await mcp.call_tool("search", {"query": f"w{last:06d}x"}))
        read = structured(await mcp.call_tool("read_document", {"path": found["hits"][0]["path"]}))
        # Every file touched, so the rescan reads them all again; the tools keep answering.
        for folder in corpus.iterdir():
            for note in folder.iterdir():
                os.utime(note, ns=(time.time_ns(), time.time_ns() + 10**9))
        latency: list[float] = []

        async def list_during_refresh() -> None:
            await anyio.sleep(0.01)
            started = time.perf_counter()
            await mcp.call_tool("list_documents", {"limit": 10})
            latency.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(list_during_refresh)
            await engine.refresh()
        refreshed = time.perf_counter() - started
    assert listing["total"] == FILES
    assert listing["next_offset"] == len(listing["documents"])  # pages stay small
    assert found["hits"][0]["path"] == f"part{last // 1000:03d}/note{last:06d}.md"
    assert read["text"] == f"Note {last}: the code word is w{last:06d}x.\n"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n{FILES:,} files: scan {scanned:.2f} s, rescan reading nothing {rescanned:.2f} s; "
        f"served: first index ({engine.counter.calls} count_tokens calls) {indexed:.1f} s, rescan "
        f"reading every file {refreshed:.2f} s, list_documents meanwhile "
        f"{latency[0] * 1000:.0f} ms; peak RSS of this process {peak:.0f} MB"
    )
    assert latency[0] < max(1.0, refreshed)


# --- deep nesting and long names ------------------------------------------------------


async def test_folders_nested_1200_deep_are_scanned_and_served(
    running_emulator: Any, emulator: Control, scratch: Path
) -> None:
    corpus = scratch / "corpus"
    write(corpus, "top.md", "At the top.\n")
    deep = make_deep(corpus, 1200, text="The well is 1200 folders deep.\n")  # past recursion
    assert [d.path for d in scan(corpus).documents] == [deep, "top.md"]
    async with serving(corpus, running_emulator.base_url, scratch / "s") as (mcp, _):
        found = structured(await mcp.call_tool("search", {"query": "well folders deep"}))
        read = structured(await mcp.call_tool("read_document", {"path": deep}))
    assert found["hits"][0]["path"] == deep
    assert read["text"] == "The well is 1200 folders deep.\n"


def test_a_path_longer_than_the_system_allows_is_left_out_with_the_reason(scratch: Path) -> None:
    write(scratch, "top.md")
    make_deep(scratch, 250, "x" * 40)  # 10,250 bytes of path; Linux's PATH_MAX is 4,096
    result = scan(scratch)
    assert [d.path for d in result.documents] == ["top.md"]
    assert len(result.skipped) == 1
    assert result.skipped[0].reason == "folder cannot be read: File name too long"
    assert set(result.skipped[0].path.split("/")) == {"x" * 40}


async def test_the_longest_names_the_filesystem_allows_are_served(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    longest = "n" * 252 + ".md"  # 255 bytes: NAME_MAX
    accented = "é" * 125 + ".md"  # 253 bytes in 128 characters
    write(corpus, f"{'f' * 255}/{longest}", "The longest name.\n")
    write(corpus, accented, "Accents take two bytes each.\n")
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        listing = structured(await mcp.call_tool("list_documents", {}))
        read = structured(await mcp.call_tool("read_document", {"path": f"{'f' * 255}/{longest}"}))
    assert sorted(d["path"] for d in listing["documents"]) == sorted(
        [accented, f"{'f' * 255}/{longest}"]
    )
    assert read["text"] == "The longest name.\n"


async def test_a_folder_too_deep_for_the_file_watcher_is_still_watched(
    running_emulator: Any, emulator: Control, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On Python 3.11 watchdog's walk recurses past the limit: the folder is rescanned on a
    # timer instead (stats.rescanning). Either way every change must be seen.
    monkeypatch.setattr("corpus_cache.corpus.watch.RESCAN_INTERVAL", 0.1)
    corpus = scratch / "corpus"
    write(corpus, "top.md", "At the top.\n")
    deep = make_deep(corpus, 1200)
    async with (
        serving(corpus, running_emulator.base_url, scratch / "s") as (_, engine),
        watched(engine) as watcher,
    ):
        swaps = Swaps(engine)
        write(corpus, "new.md", "Seen by the timer.\n")
        (corpus / deep).write_text("Edited at the bottom.\n")
        await swaps.until(lambda s: "new.md" in paths(s))
        await swaps.until(lambda s: text_of(s, deep) == "Edited at the bottom.\n")
    assert watcher.stats.failures == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_deep_tree_moved_into_a_watched_folder_does_not_leave_the_watcher_deaf(
    running_emulator: Any, emulator: Control, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("corpus_cache.corpus.watch.ROOT_CHECK_INTERVAL", 0.1)
    monkeypatch.setattr("corpus_cache.corpus.watch.RESCAN_INTERVAL", 0.1)
    corpus, elsewhere = scratch / "corpus", scratch / "elsewhere"
    write(corpus, "top.md", "At the top.\n")
    elsewhere.mkdir()
    deep = make_deep(elsewhere, 1200)
    async with (
        serving(corpus, running_emulator.base_url, scratch / "s") as (_, engine),
        watched(engine) as watcher,
    ):
        swaps = Swaps(engine)
        (elsewhere / "d").rename(corpus / "d")  # watchdog's thread recurses into it, and dies
        await swaps.until(lambda s: deep in paths(s))
        write(corpus, "later.md", "Heard after all.\n")
        await swaps.until(lambda s: "later.md" in paths(s))
    assert watcher.stats.failures == 0


# --- names ----------------------------------------------------------------------------

ODD_NAMES = {  # name on disk -> (as the list of what was left out shows it, reason)
    b"new\nline.md": ("new\\nline.md", "name contains a line break"),
    b"carriage\rreturn.md": ("carriage\\rreturn.md", "name contains a line break"),
    b"tab\there.md": ("tab\\there.md", "name contains a control character"),
    b"bell\x07.md": ("bell\\u0007.md", "name contains a control character"),
    "evil\u202egnp.md".encode(): ("evil\\u202egnp.md",
                                  "name contains a text-direction control character"),
    "line\u2028sep.md".encode(): ("line\\u2028sep.md", "name contains a line break"),
    b"bad\xff.md": ("bad\\xff.md", "name is not valid UTF-8"),
    b"latin\xe9.md": ("latin\\xe9.md", "name is not valid UTF-8"),
    b"back\\slash.md": ("back\\\\slash.md",
                        "name contains a backslash, which clients take for a folder separator"),
    b"folder\nname": ("folder\\nname/", "name contains a line break"),
    b"bad\xfe": ("bad\\xfe/", "name is not valid UTF-8"),
}  # fmt: skip
SERVED_NAMES = [
    "-rf.md", "--help.md", " leading space.md", "trailing space .md", "café.md", "שלום.md",
    "👩\u200d💻 notes.md", "quote\"s.md", "a:b.md", "percent%20.md", "#hash.md",
]  # fmt: skip


def write_odd_names(corpus: Path) -> None:
    for served in SERVED_NAMES:
        write(corpus, served, f"The file {served} is about pelicans.\n")
    root = os.fsencode(corpus)
    for name in ODD_NAMES:
        if name in (b"folder\nname", b"bad\xfe"):
            os.mkdir(root + b"/" + name)
            name += b"/inside.md"
        fd = os.open(root + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"A file with an odd name, about pelicans.\n")
        os.close(fd)


def test_names_that_cannot_be_cited_unambiguously_are_left_out_and_shown_escaped(
    tmp_path: Path,
) -> None:
    write_odd_names(tmp_path)
    result = scan(tmp_path)
    assert sorted(d.path for d in result.documents) == sorted(SERVED_NAMES)
    assert {s.path: s.reason for s in result.skipped} == dict(ODD_NAMES.values())
    for skipped in result.skipped:
        assert skipped.path.isprintable(), skipped.path


async def test_odd_names_never_break_the_list_search_or_citations(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write_odd_names(corpus)
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        listing = await mcp.call_tool("list_documents", {})
        found = await mcp.call_tool("search", {"query": "pelicans", "limit": 50})
        answer = await mcp.call_tool("ask", {"question": "Which files are about pelicans?"})
        dashed = structured(await mcp.call_tool("read_document", {"path": "-rf.md"}))
        index = json.loads((await mcp.read_resource("corpus://index")).contents[0].text)  # type: ignore[union-attr]
    served = set(SERVED_NAMES)
    lines = text(listing).splitlines()
    assert {line.split("  (")[0] for line in lines[: len(served)]} == served
    assert lines[len(served)] == f"{len(served)} of {len(served)} documents shown."
    assert {h["path"] for h in structured(found)["hits"]} == served
    for hit in text(found).split("\n\n"):
        assert hit.split("\n")[0].rsplit(":", 1)[0] in served
    cited = structured(answer)["citations"]
    assert cited
    assert {c["path"] for c in cited} <= served
    sources = text(answer).split("Sources:\n")[1].split("\n\n")[0].splitlines()
    assert all(line.split("] ", 1)[1].split(" \u201c")[0].rsplit(":", 1)[0] in served
               for line in sources)  # fmt: skip
    assert dashed["text"] == "The file -rf.md is about pelicans.\n"
    assert {s["path"] for s in index["left_out"]} == {shown for shown, _ in ODD_NAMES.values()}


async def test_a_file_with_a_name_that_is_not_utf8_arriving_in_a_watched_folder_is_left_out(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    write(corpus, "guide.md", "The guide.\n")
    async with (
        serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, engine),
        watched(engine) as watcher,
    ):
        swaps = Swaps(engine)
        fd = os.open(os.fsencode(corpus) + b"/bad\xff.md", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"Named in Latin-1.\n")
        os.close(fd)
        await swaps.until(lambda s: ("bad\\xff.md", "name is not valid UTF-8") in
                          {(x.path, x.reason) for x in s.skipped})  # fmt: skip
        write(corpus, "later.md", "Still watching.\n")
        await swaps.until(lambda s: "later.md" in paths(s))
        listing = structured(await mcp.call_tool("list_documents", {}))
    assert listing["skipped"] == {"name is not valid UTF-8": 1}
    assert watcher.stats.failures == 0
