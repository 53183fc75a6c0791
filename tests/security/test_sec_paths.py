"""Nothing outside the corpus folder is read through a race, a link or a replaced folder
(issue 15, classes 1 and 2, and links in class 7).

Someone who can write inside the corpus folder swaps a subfolder for a symlink to an
outside folder after its parent was listed, re-points a symlink between the check and the
read, lays a hard link to an outside file, or links to a file the rules leave out; someone
who can write the folder's parent puts another folder (or a symlink to one) at its path.
None of it gets an outside or left-out file listed, served by `read_document` or `search`,
or sent to `count_tokens`, through the scan, the watcher or the tools.

Races run on real temporary folders: the moment between listing and reading is made to
happen every time with an audit hook (faulty_folders.before_opening), and a thread that
flips a folder or a link for a bounded number of rounds and seconds tries it by chance.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent

from corpus_cache.corpus import beneath
from corpus_cache.corpus.beneath import CorpusRoot
from corpus_cache.corpus.documents import Snapshot
from corpus_cache.corpus.scan import ScanOptions, scan
from corpus_cache.errors import CorpusReplacedError
from support.emulator_control import Control
from support.engines import engine_on
from support.faulty_folders import before_opening, write
from support.live_folder import Seen, Swaps, condition, paths, text_of, watched
from support.mcp_session import serving

OUTSIDE = "OUTSIDE-THE-CORPUS the root password is hunter2"
LEFT_OUT = "LEFT-OUT-BY-A-RULE the deploy token is swordfish"
INSIDE = "Inside the corpus: the kettle is descaled on Fridays."

RACE_ROUNDS = 150  # scans per race test, or RACE_SECONDS, whichever ends first
RACE_SECONDS = 1.5


@pytest.fixture(params=["openat2", "walk"])
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of opening beneath the root: openat2, and the walk of O_NOFOLLOW opens
    used where the kernel has no openat2."""
    if request.param == "openat2" and not beneath.openat2_works():
        pytest.skip("this kernel has no openat2")
    monkeypatch.setattr(beneath, "use_openat2", request.param == "openat2")
    return str(request.param)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """A corpus with a subfolder and a .gitignore, and an outside folder beside it with
    files of the same names as the corpus's."""
    corpus, outside = tmp_path / "corpus", tmp_path / "outside"
    write(corpus, ".gitignore", "*.log\n")
    write(corpus, "guide.md", f"# Guide\n\n{INSIDE}\n")
    write(corpus, "sub/note.md", f"# Note\n\n{INSIDE}\n")
    write(outside, "note.md", f"# Note\n\n{OUTSIDE}\n")
    write(outside, "secret.md", f"{OUTSIDE}\n")
    return corpus, outside


def leaked(snapshot_or_texts: Snapshot | list[str], marker: str = OUTSIDE) -> list[str]:
    texts = (
        snapshot_or_texts
        if isinstance(snapshot_or_texts, list)
        else [d.text for d in snapshot_or_texts.documents]
    )
    return [text for text in texts if marker in text]


def swap_for_link(folder: Path, target: Path) -> None:
    """Move `folder` aside and put a symlink to `target` at its name."""
    folder.rename(folder.with_name(folder.name + ".moved"))
    folder.symlink_to(target, target_is_directory=True)


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def saved(words: str) -> Callable[[Snapshot], bool]:
    return lambda snapshot: words in (text_of(snapshot, "guide.md") or "")


@contextmanager
def flipping(flip: Callable[[bool], None]) -> Iterator[None]:
    """A thread that calls flip(True), flip(False), ... until the block ends."""
    stop = threading.Event()

    def run() -> None:
        state = True
        while not stop.is_set():
            flip(state)
            state = not state

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def scans_while(root: Path, rounds: int = RACE_ROUNDS) -> list[str]:
    """Texts of every document of up to `rounds` scans made within RACE_SECONDS."""
    texts: list[str] = []
    deadline = time.monotonic() + RACE_SECONDS
    for _ in range(rounds):
        texts.extend(d.text for d in scan(root).documents)
        if time.monotonic() > deadline or leaked(texts):
            break
    return texts


# --- class 1: a folder swapped for a symlink after its parent was listed ---------------


def test_a_subfolder_swapped_for_a_symlink_after_its_parent_is_listed_is_not_read(
    opener: str,
    folders: tuple[Path, Path],
) -> None:
    corpus, outside = folders
    # The root's .gitignore is read after the root is listed and before `sub` is.
    with before_opening(corpus / ".gitignore", lambda: swap_for_link(corpus / "sub", outside)):
        result = scan(corpus)
    assert leaked(result) == []
    assert "sub/note.md" not in {d.path for d in result.documents}
    assert ("sub", "folder cannot be read: replaced by a symlink") in {
        (s.path, s.reason) for s in result.skipped
    }


def test_a_folder_on_the_path_swapped_for_a_symlink_just_before_a_file_is_opened_is_not_followed(
    opener: str,
    folders: tuple[Path, Path],
) -> None:
    corpus, outside = folders
    note = corpus / "sub" / "note.md"
    with before_opening(note, lambda: swap_for_link(corpus / "sub", outside)):
        result = scan(corpus)
    assert leaked(result) == []
    assert ("sub/note.md", "replaced by a symlink before it could be read") in {
        (s.path, s.reason) for s in result.skipped
    }


def test_a_subfolder_flipping_between_a_folder_and_a_symlink_out_never_leaks_in_a_race(
    opener: str,
    folders: tuple[Path, Path],
) -> None:
    corpus, outside = folders
    for n in range(150):  # files listed and read before `sub`: a wider window
        write(corpus, f"a{n:03d}.md", f"Filler {n}.\n")
    sub, aside, link = corpus / "sub", corpus / "sub.real", corpus / "sub.link"
    link.symlink_to(outside, target_is_directory=True)

    def flip(to_link: bool) -> None:
        if to_link:
            sub.rename(aside)
            link.rename(sub)
        else:
            sub.rename(link)
            aside.rename(sub)

    with flipping(flip):
        texts = scans_while(corpus)
    assert leaked(texts) == []


# --- class 1: a symlink re-pointed between the check and the read ----------------------


def test_a_symlink_re_pointed_outside_between_the_check_and_the_read_serves_nothing_outside(
    opener: str,
    folders: tuple[Path, Path],
) -> None:
    corpus, outside = folders
    alias = corpus / "alias.md"
    alias.symlink_to(corpus / "guide.md")

    def re_point() -> None:
        alias.unlink()
        alias.symlink_to(outside / "secret.md")

    with before_opening(alias, re_point):
        result = scan(corpus)
    assert leaked(result) == []


def test_a_symlink_flipping_between_an_inside_and_an_outside_file_never_leaks_in_a_race(
    folders: tuple[Path, Path],
) -> None:
    corpus, outside = folders
    alias = corpus / "alias.md"
    alias.symlink_to(corpus / "guide.md")
    spare = corpus / "spare.lnk"

    def flip(out: bool) -> None:
        spare.symlink_to(outside / "secret.md" if out else corpus / "guide.md")
        spare.rename(alias)  # atomic: the link is always there, pointing one way or the other

    with flipping(flip):
        texts = scans_while(corpus)
    assert leaked(texts) == []


def test_a_symlink_to_an_admitted_document_is_served_with_that_documents_text(
    folders: tuple[Path, Path],
) -> None:
    corpus, _ = folders
    (corpus / "alias.md").symlink_to("guide.md")
    documents = {d.path: d for d in scan(corpus).documents}
    assert documents["alias.md"].text == documents["guide.md"].text


# --- class 1: a hard link to an outside file ---------------------------------------------


def test_a_hard_link_to_an_outside_file_is_left_out_with_the_reason(
    opener: str,
    folders: tuple[Path, Path],
) -> None:
    corpus, outside = folders
    os.link(outside / "secret.md", corpus / "notes.md")
    result = scan(corpus)
    assert leaked(result) == []
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons["notes.md"].startswith(
        "a hard link, and not all of its 2 names are files the corpus serves"
    )


def test_a_hard_link_whose_names_are_all_in_the_corpus_is_served(
    folders: tuple[Path, Path],
) -> None:
    corpus, _ = folders
    os.link(corpus / "guide.md", corpus / "sub" / "guide-again.md")
    served = {d.path for d in scan(corpus).documents}
    assert {"guide.md", "sub/guide-again.md"} <= served


def test_a_hard_link_to_an_outside_file_is_served_only_when_allowed_explicitly(
    folders: tuple[Path, Path],
) -> None:
    corpus, outside = folders
    os.link(outside / "secret.md", corpus / "notes.md")
    assert leaked(scan(corpus, ScanOptions(allow_hard_links=True))) == [f"{OUTSIDE}\n"]


def test_a_hard_link_to_a_secret_or_ignored_name_in_the_corpus_is_left_out(
    folders: tuple[Path, Path],
) -> None:
    corpus, _ = folders
    write(corpus, ".env", f"{LEFT_OUT}\n")
    write(corpus, "debug.log", f"{LEFT_OUT}\n")
    os.link(corpus / ".env", corpus / "env-copy.md")
    os.link(corpus / "debug.log", corpus / "log-copy.md")
    result = scan(corpus)
    assert leaked(result, LEFT_OUT) == []
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons["env-copy.md"].startswith("a hard link")
    assert reasons["log-copy.md"].startswith("a hard link")


# --- class 7, links: a link is admitted only if its target would be --------------------


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("debug.log", "ignored by .gitignore"),
        (".git/config", "ignored, or in a folder that is never read"),
        ("node_modules/pkg/README.md", "ignored, or in a folder that is never read"),
        ("private/plan.md", "ignored, or in a folder that is never read"),
    ],
)
def test_a_symlink_to_a_file_the_rules_leave_out_is_left_out_too(
    folders: tuple[Path, Path], target: str, why: str
) -> None:
    corpus, _ = folders
    with (corpus / ".gitignore").open("a") as rules:
        rules.write("private/\n")
    write(corpus, target, f"{LEFT_OUT}\n")
    (corpus / "link.md").symlink_to(corpus / target)
    result = scan(corpus)
    assert leaked(result, LEFT_OUT) == []
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons["link.md"] == f"symlink to a file that is left out of the corpus: {why}"


def test_a_symlink_to_a_file_with_secret_content_is_left_out(folders: tuple[Path, Path]) -> None:
    corpus, _ = folders
    key = "AKIA" + "Q3EGKXJ5TZ7WN2RB"
    write(corpus, "keys.md", f"aws_access_key_id = {key}\n")
    (corpus / "link.md").symlink_to("keys.md")
    result = scan(corpus)
    assert not any(key in d.text for d in result.documents)
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons["link.md"].startswith("symlink to a file that is left out of the corpus: secret")


# --- class 1 through the tools, and through the watcher --------------------------------


@pytest.mark.anyio
async def test_an_outside_file_reached_by_a_race_or_a_link_is_never_listed_read_searched_or_counted(
    folders: tuple[Path, Path], running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus, outside = folders
    os.link(outside / "secret.md", corpus / "hard.md")
    alias = corpus / "alias.md"
    alias.symlink_to(corpus / "guide.md")

    def re_point() -> None:
        alias.unlink()
        alias.symlink_to(outside / "secret.md")

    with (
        before_opening(alias, re_point),
        before_opening(corpus / ".gitignore", lambda: swap_for_link(corpus / "sub", outside)),
    ):
        async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
            listing = await mcp.call_tool("list_documents", {})
            found = await mcp.call_tool("search", {"query": "root password hunter2"})
            reads = [
                await mcp.call_tool("read_document", {"path": path})
                for path in ("hard.md", "alias.md", "sub/note.md")
            ]
    everything = [text(listing), text(found), *(text(r) for r in reads)]
    assert leaked(everything) == []
    sent = [json.dumps(entry) for entry in emulator.log(bodies=True)]
    assert any("count_tokens" in entry for entry in sent)
    assert leaked(sent) == []


@pytest.mark.anyio
async def test_the_watcher_never_serves_an_outside_folder_swapped_in_during_a_rescan(
    folders: tuple[Path, Path], running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus, outside = folders
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine:
        seen = Seen(engine)
        swaps = Swaps(engine)
        async with watched(engine):
            for save in range(3):  # the red team needed two saves
                with before_opening(
                    corpus / ".gitignore", lambda: swap_for_link(corpus / "sub", outside)
                ):
                    write(corpus, "guide.md", f"# Guide\n\n{INSIDE} Save {save}.\n")
                    await swaps.until(saved(f"Save {save}."))
                if (corpus / "sub").is_symlink():  # put back for the next save
                    (corpus / "sub").unlink()
                    (corpus / "sub.moved").rename(corpus / "sub")
    assert leaked(seen.texts()) == []
    sent = [json.dumps(entry) for entry in emulator.log(bodies=True)]
    assert leaked(sent) == []


# --- class 2: the corpus folder replaced ------------------------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    return write(tmp_path / "elsewhere", "other.md", f"# Other\n\n{OUTSIDE}\n").parent


@pytest.mark.anyio
async def test_a_corpus_folder_replaced_by_a_symlink_is_not_served_and_the_tools_say_so(
    folders: tuple[Path, Path],
    elsewhere: Path,
    running_emulator: Any,
    emulator: Control,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("corpus_cache.corpus.watch.ROOT_CHECK_INTERVAL", 0.05)
    corpus, _ = folders
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, engine):
        seen = Seen(engine)
        async with watched(engine) as watcher:
            before = engine.current.snapshot.documents
            swap_for_link(corpus, elsewhere)
            write(elsewhere, "later.md", f"{OUTSIDE} (saved after the swap)\n")
            # The red team saw the other folder served within 0.5 s; wait longer than that
            # for the watcher to notice, or to serve it.
            await condition(
                lambda: (
                    getattr(watcher.stats, "folder_replaced", False) or bool(leaked(seen.texts()))
                ),
                deadline=5.0,
            )
            status = await mcp.call_tool("cache_status", {})
            listing = await mcp.call_tool("list_documents", {})
            refreshed = await mcp.call_tool("refresh", {})
            found = await mcp.call_tool("search", {"query": "root password hunter2"})
        assert engine.current.snapshot.documents == before  # the last snapshot, kept
    assert leaked(seen.texts()) == []
    assert leaked([text(found)]) == []
    assert "was replaced" in text(status)
    assert (status.structured_content or {}).get("folder_problem")
    assert "was replaced" in text(listing)
    assert refreshed.is_error
    assert "was replaced" in text(refreshed)
    assert leaked([json.dumps(e) for e in emulator.log(bodies=True)]) == []


@pytest.mark.anyio
async def test_a_corpus_folder_replaced_by_another_folder_is_not_rescanned_by_refresh(
    folders: tuple[Path, Path], elsewhere: Path, running_emulator: Any, emulator: Control,
    tmp_path: Path,
) -> None:  # fmt: skip
    corpus, _ = folders
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine:
        os.rename(corpus, tmp_path / "corpus.old")
        os.rename(elsewhere, corpus)
        with pytest.raises(CorpusReplacedError, match="was replaced"):
            await engine.refresh()
        assert leaked(engine.current.snapshot) == []
        # The original folder back at its path is served again.
        os.rename(corpus, tmp_path / "elsewhere")
        os.rename(tmp_path / "corpus.old", corpus)
        write(corpus, "back.md", "Back at its path.\n")
        assert "back.md" in paths((await engine.refresh()).snapshot)


@pytest.mark.anyio
async def test_the_watcher_serves_the_original_folder_again_when_it_comes_back(
    folders: tuple[Path, Path],
    elsewhere: Path,
    running_emulator: Any,
    emulator: Control,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("corpus_cache.corpus.watch.ROOT_CHECK_INTERVAL", 0.05)
    corpus, _ = folders
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine:
        seen = Seen(engine)
        swaps = Swaps(engine)
        async with watched(engine) as watcher:
            swap_for_link(corpus, elsewhere)
            await condition(lambda: watcher.stats.folder_replaced)
            corpus.unlink()
            corpus.with_name("corpus.moved").rename(corpus)
            write(corpus, "back.md", "Back at its path.\n")
            await swaps.until(lambda s: "back.md" in paths(s))
            assert not watcher.stats.folder_replaced
    assert leaked(seen.texts()) == []


def test_a_scan_of_a_pinned_root_never_reads_the_folder_now_at_its_path(
    opener: str, folders: tuple[Path, Path], elsewhere: Path
) -> None:
    corpus, _ = folders
    pinned = CorpusRoot(corpus)
    try:
        # Swapped while the scan runs: what it read is not kept.
        with (
            before_opening(corpus / "guide.md", lambda: swap_for_link(corpus, elsewhere)),
            pytest.raises(CorpusReplacedError),
        ):
            scan(pinned)
        with pytest.raises(CorpusReplacedError):
            scan(pinned)
    finally:
        pinned.close()
