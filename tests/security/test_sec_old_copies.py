"""Issue 15, class 11: text removed from a file is not sent to the API again.

By default an edit that removes text (any line of the old copy missing from the new one)
drops the old copy from the cached prefix, and moves a conversation pinned to the older
corpus onto the live one; an edit that only adds text keeps its old copy (it holds nothing
the file lacks). `keep_old_copies` (--keep-old-copies) keeps old copies regardless."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client

from corpus_cache.api.tokens import content_key
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.corpus.documents import Document, Snapshot
from corpus_cache.corpus.search import SearchIndex
from corpus_cache.engine.core import Engine
from corpus_cache.mcp_surface.server import build_server
from corpus_cache.plan.layout import Block, Layout, Plan, Shard
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on

pytestmark = pytest.mark.anyio


def secret_of(path: Path) -> str:
    """The line each document starts with at the end: a door code unique to the file."""
    return f"Door code ORCHID-{zlib.crc32(str(path).encode()):08x} opens the server room.\n"


def code(line: str) -> str:
    return line.split()[2]


@asynccontextmanager
async def settled(
    tmp_path: Path, running_emulator: Any, emulator: Control, **settings: Any
) -> AsyncIterator[tuple[Path, str, Engine, Callable[[float], None]]]:
    """A folder nothing has touched for a month, each document ending with its own door
    code, and an engine on it with a clock in step with the emulator's (`advance`). Yields
    the first document of the layout, its door code line, the engine and `advance`."""
    corpus = write_corpus(tmp_path / "corpus")
    for i in range(8):  # enough documents that one is a small share of the corpus
        (corpus / f"notes-{i}.md").write_text(
            "".join(f"Note {i}.{n}: team {i} reviews item {n} every week.\n" for n in range(120))
        )
    files = [p for p in corpus.rglob("*") if p.is_file()]
    for path in files:
        path.write_text(path.read_text() + "\n" + secret_of(path))
    emulator.freeze()
    start = emulator.post("clock", {"advance": 0})["now"]
    now = [start]
    for path in corpus.rglob("*"):
        os.utime(path, (start - 30 * 86_400, start - 30 * 86_400))

    def advance(seconds: float) -> None:
        now[0] += seconds
        emulator.advance(seconds)

    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "s", clock=lambda: now[0], watch=False,
        **settings,
    ) as engine:  # fmt: skip
        first = corpus / engine.current.shards[0].plan.order[0]
        yield first, secret_of(first), engine, advance


def _bodies(emulator: Control) -> list[str]:
    calls = [e for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"]
    return [json.dumps(e["body"]) for e in sorted(calls, key=lambda e: e["time"])]


async def test_a_line_removed_by_an_edit_is_never_sent_again_nor_found_by_search(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    async with settled(tmp_path, running_emulator, emulator) as (doc, secret, engine, advance):
        async with Client(build_server(engine)) as mcp:  # type: ignore[arg-type]
            await mcp.call_tool("ask", {"question": "When does the on-call rotation hand over?"})
            assert code(secret) in _bodies(emulator)[-1]
            doc.write_text(doc.read_text().replace(secret, "The door code was changed.\n"))
            advance(60)
            await mcp.call_tool("refresh", {})
            found = await mcp.call_tool("search", {"query": f"{code(secret)} door code"})
            await mcp.call_tool("ask", {"question": "What opens the server room?"})
            await mcp.call_tool("ask", {"question": "When does the on-call rotation hand over?"})
        plan = engine.current.shards[0].plan
    assert found.structured_content is not None
    assert code(secret) not in json.dumps(found.structured_content["hits"])
    assert not plan.superseded
    for body in _bodies(emulator)[1:]:
        assert code(secret) not in body


async def test_an_edit_that_only_adds_text_keeps_its_old_copy(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    async with settled(tmp_path, running_emulator, emulator) as (doc, _secret, engine, advance):
        await engine.ask("When does the on-call rotation hand over?")
        doc.write_text(doc.read_text() + "\nA new fact: ZEBRA-42.\n")
        advance(60)
        await engine.refresh()
        second = await engine.ask("What is the new fact ZEBRA-42?")
        assert engine.current.shards[0].plan.superseded == frozenset({0})
    full = second.usage.cache_read_tokens
    assert 0 < second.usage.cache_write_5m_tokens < full / 4  # the edit wrote one document


async def test_with_keep_old_copies_the_old_copy_stays_and_is_still_sent(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    async with settled(tmp_path, running_emulator, emulator, keep_old_copies=True) as (
        doc, secret, engine, advance,
    ):  # fmt: skip
        await engine.ask("When does the on-call rotation hand over?")
        doc.write_text(doc.read_text().replace(secret, "The door code was changed.\n"))
        advance(60)
        await engine.refresh()
        await engine.ask("What opens the server room?")
        assert engine.current.shards[0].plan.superseded == frozenset({0})
    assert code(secret) in _bodies(emulator)[-1]


async def test_a_conversation_begun_before_the_edit_no_longer_sends_the_removed_line(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    async with settled(tmp_path, running_emulator, emulator) as (doc, secret, engine, advance):
        first = await engine.ask("When does the on-call rotation hand over?", session="new")
        doc.write_text(doc.read_text().replace(secret, ""))
        advance(60)
        await engine.refresh()
        follow = await engine.ask("What opens the server room?", session=first.session)
    assert follow.session == first.session
    assert follow.session_turns == 2  # the conversation goes on, on the live corpus
    assert follow.session_snapshot_is_live
    assert code(secret) not in _bodies(emulator)[-1]


async def test_a_conversation_whose_file_was_deleted_no_longer_sends_it(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    async with settled(tmp_path, running_emulator, emulator) as (doc, secret, engine, advance):
        first = await engine.ask("When does the on-call rotation hand over?", session="new")
        doc.unlink()
        advance(60)
        await engine.refresh()
        await engine.ask("What opens the server room?", session=first.session)
    assert code(secret) not in _bodies(emulator)[-1]


# --- the rule, pure -----------------------------------------------------------------------

LINES = st.lists(st.sampled_from(["a", "b", "c", "d", "", "secret 1"]), max_size=6)


def _document(text: str) -> Document:
    return Document.from_text("f.md", text, size=len(text), mtime_ns=0)


def _one_document_corpus(text: str) -> Corpus:
    doc = _document(text)
    plan = Plan((Block(("f.md",), (content_key(doc),), 10, 20, "5m", (10,)),), 10, 1, True, "")
    snapshot = Snapshot(Path("/corpus"), 1, 0.0, (doc,), ())
    layout = Layout((Shard(0, plan, 10),), 100, ())
    return Corpus(snapshot, {"f.md": 10}, layout, SearchIndex(snapshot))


@given(old=LINES, new=LINES)
def test_an_old_copy_is_flagged_exactly_when_one_of_its_lines_is_gone(
    old: list[str], new: list[str]
) -> None:
    from corpus_cache.cache.live_corpus import removed_text

    previous = _one_document_corpus("\n".join(old))
    flagged = removed_text(previous, {"f.md": _document("\n".join(new))})
    kept = "\n".join(new).splitlines()
    gone = [line for line in "\n".join(old).splitlines() if line not in kept]
    assert bool(flagged) == bool(gone)
    key = content_key(previous.snapshot.documents[0])
    assert removed_text(previous, {}) == {("f.md", key)}  # a deleted file: all of it is gone
