"""Nothing outside the corpus is ever read or served, however a path is spelled or a link
is laid, and secret files stay out whatever the case or Unicode form of their names."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError
from watchdog.utils.dirsnapshot import DirectorySnapshot

from corpus_cache.corpus.paths import corpus_relative
from corpus_cache.corpus.scan import scan
from corpus_cache.corpus.watch import scandir_pruned
from corpus_cache.errors import InvalidArgumentError
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on
from support.live_folder import Swaps, paths, watched
from support.mcp_session import serving

OUTSIDE = "TOP SECRET from outside the corpus"
HIDDEN = "PASSWORD=hunter2-from-a-secret-file"
CAFE_NFC = unicodedata.normalize("NFC", "café.md")
CAFE_NFD = unicodedata.normalize("NFD", "café.md")


@pytest.fixture
def tricky(tmp_path: Path) -> Path:
    """A corpus with every trick laid in it, and a secret folder beside it."""
    corpus = write_corpus(tmp_path / "corpus", filler_sentences=10)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "outside.md").write_text(f"# Outside\n\n{OUTSIDE}.\n")
    os.symlink(outside / "outside.md", corpus / "link-file.md")
    os.symlink(outside, corpus / "link-dir")
    os.symlink(corpus / "loop-b", corpus / "loop-a")
    os.symlink(corpus / "loop-a", corpus / "loop-b")
    os.symlink(".", corpus / "self")
    (corpus / "sub").mkdir()
    os.symlink("..", corpus / "sub" / "up")
    for name in [".env", ".ENV", "ID_RSA", "Secrets.YAML", "．env", ".e\u200bnv", "Server.PEM"]:
        (corpus / "sub" / name).write_text(f"{HIDDEN}\n")
    os.symlink(corpus / "sub" / ".env", corpus / "innocent.md")
    os.link(corpus / "oncall.md", corpus / "hard.md")  # a hard link is inside: served
    (corpus / CAFE_NFD).write_text("# Café\n\nThe café opens at 07:15.\n")
    return corpus


# --- the scan ------------------------------------------------------------------------


def test_links_out_loops_and_secret_look_alikes_are_left_out_with_reasons(tricky: Path) -> None:
    result = scan(tricky)
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons["link-file.md"] == "symlink to a file outside the corpus"
    assert reasons["link-dir"] == "symlink to a folder outside the corpus"
    assert reasons["loop-a"] == reasons["loop-b"] == "broken or looping symlink"
    assert reasons["self"] == reasons["sub/up"] == "symlink to a folder (not followed)"
    assert reasons["innocent.md"] == "symlink to a secret file (never sent by default)"
    for name in [".env", ".ENV", "ID_RSA", "Secrets.YAML", "．env", "Server.PEM"]:
        assert reasons[f"sub/{name}"] == "secret file (never sent by default)", name
    assert not any(HIDDEN in d.text or OUTSIDE in d.text for d in result.documents)
    served = {d.path for d in result.documents}
    assert {"hard.md", "oncall.md", CAFE_NFD} <= served
    assert all(not p.startswith(("self/", "sub/up/", "link-dir/")) for p in served)


def test_a_zero_width_character_does_not_hide_a_secret_name(tricky: Path) -> None:
    reasons = {s.path: s.reason for s in scan(tricky).skipped}
    assert any(p.startswith("sub/.e") and "secret" in r for p, r in reasons.items() if "nv" in p)
    assert "sub/.e\u200bnv" not in {d.path for d in scan(tricky).documents}


def test_polling_never_walks_into_a_symlinked_folder(tmp_path: Path) -> None:
    # One loop only: were links followed, the walk would go 40 levels deep and end (two
    # loops would branch at every level and never end).
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("A.\n")
    os.symlink("..", tmp_path / "sub" / "up")
    os.symlink(tmp_path / "loop-b", tmp_path / "loop-a")
    os.symlink(tmp_path / "loop-a", tmp_path / "loop-b")
    snapshot = DirectorySnapshot(str(tmp_path), stat=os.stat, listdir=scandir_pruned)
    walked = {os.path.relpath(os.fsdecode(p), tmp_path) for p in snapshot.paths}
    assert walked == {".", "a.md", "sub"}


# --- the watcher ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("poll", [False, True], ids=["native", "polling"])
async def test_symlink_loops_do_not_hang_the_watcher(
    tmp_path: Path, running_emulator: Any, emulator: Control, poll: bool
) -> None:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "guide.md").write_text("# Guide\n\nThe kettle is descaled on Fridays.\n")
    os.symlink("..", folder / "sub" / "up")
    os.symlink(folder / "b", folder / "a")
    os.symlink(folder / "a", folder / "b")
    async with engine_on(folder, running_emulator.base_url, tmp_path / "s") as engine:
        swaps = Swaps(engine)
        async with watched(engine, poll=poll):
            (folder / "sub" / "new.md").write_text("A new note.\n")
            snapshot = await swaps.until(lambda s: "sub/new.md" in paths(s))
    assert paths(snapshot) == {"guide.md", "sub/new.md"}
    assert {s.path for s in snapshot.skipped} == {"a", "b", "sub/up"}


# --- the MCP tools and resources -------------------------------------------------------

REFUSED = [
    ("../outside/outside.md", "outside the corpus"),
    ("..\\outside\\outside.md", "outside the corpus"),
    ("docs/../../outside/outside.md", "outside the corpus"),
    ("%2e%2e/outside/outside.md", "reads as '../outside/outside.md'"),
    ("%2E%2E%2Foutside%2Foutside.md", "reads as '../outside/outside.md'"),
    ("．．/outside/outside.md", "reads as '../outside/outside.md'"),  # full-width dots
    ("．．／outside／outside.md", "reads as '../outside/outside.md'"),  # and slashes
    ("..\u2215outside\u2215outside.md", "reads as '../outside/outside.md'"),  # division slash
    ("..\u2044outside\u2044outside.md", "reads as '../outside/outside.md'"),  # fraction slash
    ("\u2025/outside/outside.md", "reads as '../outside/outside.md'"),  # two-dot leader
    ("..\u2216outside\u2216outside.md", "outside the corpus"),  # set minus, a backslash
    ("/etc/passwd", "absolute"),
    ("\\etc\\passwd", "absolute"),
    ("～/outside.md", "absolute"),  # full-width tilde
    ("~/outside.md", "absolute"),
    ("C:\\Windows\\win.ini", "absolute"),
    ("\\\\server\\share\\x.md", "absolute"),
    ("%2fetc%2fpasswd", "absolute"),
    ("oncall.md\x00.txt", "NUL byte"),
    ("oncall.md%00", "NUL byte"),
    ("link-file.md", "symlink to a file outside the corpus"),
    ("link-dir", "symlink to a folder outside the corpus"),
    ("link-dir/outside.md", "not a document of this corpus"),
    ("loop-a", "broken or looping symlink"),
    ("self/oncall.md", "not a document of this corpus"),
    ("sub/up/oncall.md", "not a document of this corpus"),
    ("innocent.md", "symlink to a secret file"),
    ("sub/.env", "secret file"),
    ("sub/.ENV", "secret file"),
    ("sub/ID_RSA", "secret file"),
    ("sub/Secrets.YAML", "secret file"),
    ("sub/．env", "secret file"),
    ("sub/.e\u200bnv", "not a document of this corpus"),  # left out; listed escaped
    ("ONCALL.md", "not a document of this corpus"),  # case is not folded: Linux keeps both
    ("file:///etc/passwd", "not a document of this corpus"),
]


LOOK_ALIKES = "./\\%2eEfF~:a\x00．／＼～‥∕⁄╱⧸∖"


@given(st.text(st.sampled_from(LOOK_ALIKES), max_size=16))
def test_an_accepted_path_never_reads_as_one_outside_the_corpus(path: str) -> None:
    try:
        corpus_relative(path)
    except InvalidArgumentError:
        return
    reads_as = unicodedata.normalize("NFKC", unquote(path))
    for slash in "∕⁄╱⧸∖":
        reads_as = reads_as.replace(slash, "/")
    parts = reads_as.replace("\\", "/").split("/")
    assert ".." not in parts
    assert not reads_as.startswith(("/", "~"))
    assert "\x00" not in reads_as


@pytest.mark.anyio
async def test_read_document_refuses_every_path_trick_with_a_clear_error(
    tricky: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with serving(tricky, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        for path, message in REFUSED:
            result = await mcp.call_tool("read_document", {"path": path})
            text = result.content[0].text  # type: ignore[union-attr]
            assert result.is_error, path
            assert message in text, (path, text)
            assert OUTSIDE not in text
            assert HIDDEN not in text


@pytest.mark.anyio
async def test_the_document_resource_refuses_them_too(
    tricky: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with serving(tricky, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        for path, _message in REFUSED:
            if "\x00" in path:
                continue  # not a URI at all
            with pytest.raises(MCPError) as refused:
                await mcp.read_resource("corpus://doc/" + path)
            assert OUTSIDE not in str(refused.value)
            assert HIDDEN not in str(refused.value)
        listed = {r.uri for r in (await mcp.list_resources()).resources}
    assert not [uri for uri in listed if "outside" in uri or "sub/" in uri or "link" in uri]


@pytest.mark.anyio
async def test_search_and_listings_show_nothing_from_outside_or_from_secrets(
    tricky: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with serving(tricky, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        found = await mcp.call_tool("search", {"query": "TOP SECRET outside PASSWORD hunter2"})
        listing = await mcp.call_tool("list_documents", {})
        index = await mcp.read_resource("corpus://index")
        await mcp.call_tool("ask", {"question": "What is the password from outside?"})
    hits = found.structured_content["hits"]  # type: ignore[index]
    shown = json.dumps([hits, listing.model_dump(mode="json"), index.model_dump()])
    bodies = json.dumps([entry.get("body") for entry in emulator.log(bodies=True)])
    for text in (shown, bodies):
        assert "TOP SECRET" not in text
        assert "hunter2" not in text
    assert "Kestrel" in bodies


@pytest.mark.anyio
async def test_a_hard_link_and_either_unicode_form_of_a_name_are_served(
    tricky: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with serving(tricky, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        hard = await mcp.call_tool("read_document", {"path": "hard.md"})
        as_on_disk = await mcp.call_tool("read_document", {"path": CAFE_NFD})
        as_typed = await mcp.call_tool("read_document", {"path": CAFE_NFC})
    assert "hands over every Tuesday" in hard.structured_content["text"]  # type: ignore[index]
    for result in (as_on_disk, as_typed):
        assert not result.is_error, result.content
        assert result.structured_content["path"] == CAFE_NFD  # type: ignore[index]
        assert "07:15" in result.structured_content["text"]  # type: ignore[index]
