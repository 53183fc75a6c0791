"""Edited documents' old copies: kept in a live cached prefix so that an edit writes one
document, never sent once that prefix lapses or the file is gone, never cited."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.api.request import SUPERSEDING, build_request, map_answer
from corpus_cache.corpus.documents import Document, Snapshot
from corpus_cache.plan.anchors import select_breakpoints
from corpus_cache.plan.breakpoints import choose_cuts
from corpus_cache.plan.layout import MAX_SUPERSEDED_SHARE, Plan, plan_shard
from corpus_cache.plan.stability import DocInfo
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on
from support.planning import NOW, corpora, edited, minimums

pytestmark = pytest.mark.anyio


def plan(docs: list[DocInfo], previous: Plan | None = None, live: tuple[int, ...] = ()) -> Plan:
    return plan_shard(
        docs, min_cacheable_tokens=512, instructions_tokens=120, now=NOW, previous=previous,
        live=live,
    )  # fmt: skip


def entries(p: Plan) -> list[tuple[str, str]]:
    return list(zip(p.order, p.keys, strict=True))


@given(corpora(), minimums, st.data())
def test_an_edit_under_a_live_cache_keeps_the_whole_prefix_and_adds_one_document(
    docs: list[DocInfo], minimum: int, data: st.DataObject
) -> None:
    before = plan_shard(docs, min_cacheable_tokens=minimum, instructions_tokens=120, now=NOW)
    index = data.draw(st.integers(0, len(docs) - 1))
    after_edit = edited(docs, index, NOW + 60)
    after = plan_shard(
        after_edit, min_cacheable_tokens=minimum, instructions_tokens=120, now=NOW + 60,
        previous=before, live=before.anchors,
    )  # fmt: skip
    current = {(d.path, d.key) for d in after_edit}
    # Every document once as its current version; old copies only before it.
    assert sorted(e for i, e in enumerate(entries(after)) if i not in after.superseded) == sorted(
        current
    )
    for i in after.superseded:
        path = after.order[i]
        assert (path, after.keys[i]) not in current
        assert after.order.index(path, i + 1) > i
    assert after.superseded_tokens <= MAX_SUPERSEDED_SHARE * sum(d.tokens for d in after_edit)
    if after.superseded:
        # The old prefix is kept whole up to where the old copy was carried from.
        last_old = max(after.superseded)
        assert entries(after)[: last_old + 1] == entries(before)[: last_old + 1]


@given(corpora(max_docs=20), st.data())
def test_a_deleted_document_is_never_kept_and_nothing_after_it_either(
    docs: list[DocInfo], data: st.DataObject
) -> None:
    before = plan(docs)
    edits = data.draw(st.lists(st.integers(0, len(docs) - 1), max_size=3))
    changed = docs
    for index in edits:
        changed = edited(changed, index, NOW + 60)
    after_edits = plan(changed, before, before.anchors)
    gone = data.draw(st.sampled_from(changed)).path
    remaining = [d for d in changed if d.path != gone]
    after = plan(remaining, after_edits, after_edits.anchors)
    assert gone not in after.order
    assert {(d.path, d.key) for d in remaining} <= set(entries(after))


def test_without_a_live_cache_there_are_no_old_copies() -> None:
    docs = [DocInfo(f"d{i:02d}.md", 2_000, f"k{i}", NOW - 90 * 86_400.0) for i in range(12)]
    before = plan(docs)
    after = plan(edited(docs, 0, NOW), before, live=())
    assert not after.superseded
    assert len(after.order) == len(docs)


def test_an_edit_to_the_first_cold_document_costs_one_document_not_the_corpus() -> None:
    docs = [DocInfo(f"d{i:02d}.md", 2_000, f"k{i}", NOW - 90 * 86_400.0) for i in range(12)]
    before = plan(docs)
    after = plan(edited(docs, 0, NOW), before, live=before.anchors)
    assert after.superseded == frozenset({0})
    assert entries(after)[:12] == entries(before)
    assert after.order[12] == "d00.md"
    assert after.keys[12] == "k0'"
    # The end of the old corpus stays an anchor: the next request reads through it.
    assert 11 in after.anchors


def held_tail() -> tuple[list[DocInfo], Plan]:
    """Nine settled documents and a tail of three edited ones (d09, d10, d11, edited in that
    order), each in a block of its own."""
    docs = [DocInfo(f"d{i:02d}.md", 2_000, f"k{i}", NOW - 90 * 86_400.0) for i in range(12)]
    for i, index in enumerate((9, 10, 11)):
        docs = edited(docs, index, NOW - 600 + 60 * i)
    tail = plan(docs)
    assert tail.order[-3:] == ("d09.md", "d10.md", "d11.md")
    assert {8, 9, 10, 11} <= set(tail.anchors)
    return docs, tail


def test_after_a_break_an_edit_to_the_held_tails_end_writes_that_document_only() -> None:
    docs, before = held_tail()
    # After a break only the 1-hour entries live: the stable part's and the tail's end.
    after = plan(edited(docs, 11, NOW), before, live=(11, 8))
    # Moving d11 would write d09 and d10 again: its old copy stays, read through the end.
    assert after.superseded == frozenset({11})
    assert entries(after)[:12] == entries(before)
    assert (after.order[12], after.keys[12]) == ("d11.md", "k11''")
    assert 11 in after.anchors


def test_while_the_tail_is_cached_an_edit_moves_its_document() -> None:
    docs, before = held_tail()
    after = plan(edited(docs, 11, NOW), before, live=before.anchors)
    assert not after.superseded
    assert entries(after)[:11] == entries(before)[:11]


def test_the_tail_carries_one_old_copy_at_most() -> None:
    docs, before = held_tail()
    once = edited(docs, 11, NOW)
    first = plan(once, before, live=(11, 8))
    assert first.superseded == frozenset({11})
    # Another break, and an edit to d10, before d11's old copy: no second old copy.
    second = plan(edited(once, 10, NOW + 3_600), first, live=(12, 11, 8))
    assert len([i for i in second.superseded if i >= second.tail_start]) <= 1
    assert "d10.md" in second.order[-2:]


def document_blocks(p: Plan, snap: Snapshot, old: dict[tuple[str, str], Document]) -> list[Any]:
    content = build_request(p, snap, "q", model="m", max_tokens=10, superseded=old)
    return [
        {k: v for k, v in block.items() if k != "cache_control"}
        for block in content["messages"][0]["content"]
        if block["type"] == "document"
    ]


def test_a_block_says_the_same_whatever_comes_after_it() -> None:
    # What a block says depends only on the documents up to it: a current copy that a later
    # edit turns into an old one is still the block its cached prefix holds.
    texts = {f"d{i}.md": f"Document {i} says {i}.\n" for i in range(12)}
    versions = [snapshot(texts)]
    for path, n in (("d1.md", 7), ("d0.md", 8), ("d0.md", 9)):
        texts = {**texts, path: f"Document {path} now says {n}.\n"}
        versions.append(snapshot(texts))
    plans: list[Plan] = []
    for v in versions:
        infos = [
            DocInfo(d.path, 300, d.sha256, NOW if "now" in d.text else NOW - 90 * 86_400.0)
            for d in v.documents
        ]
        previous = plans[-1] if plans else None
        # The last edit comes after a break: only the stable part and the end are cached.
        live = previous.anchors if previous else ()
        if previous and len(plans) == 3:
            live = (previous.anchors[-1], previous.stable_anchor or 0)
        plans.append(plan(infos, previous, live))
    assert plans[-1].superseded - plans[-2].superseded  # the last edit kept an old copy
    old_copies = {(d.path, d.sha256): d for v in versions for d in v.documents}
    rendered = [document_blocks(p, v, old_copies) for p, v in zip(plans, versions, strict=True)]
    for (earlier, p), (later, q) in itertools.pairwise(zip(rendered, plans, strict=True)):
        same = 0
        while same < min(len(p.order), len(q.order)) and entries(p)[same] == entries(q)[same]:
            same += 1
        assert later[:same] == earlier[:same]


@given(
    st.lists(st.integers(1, 50), min_size=3, max_size=12),
    st.lists(st.floats(0, 1), min_size=12, max_size=12),
    st.data(),
)
def test_cuts_keep_every_required_anchor(
    sizes: list[int], rates: list[float], data: st.DataObject
) -> None:
    prefix = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    required = data.draw(st.lists(st.integers(0, len(sizes) - 2), max_size=3, unique=True))
    cuts = choose_cuts(prefix, rates[: len(sizes)], minimum=0, cuts=4, must=required)
    assert set(required) <= set(cuts)
    assert len(cuts) <= 4


def test_the_anchor_ending_the_stable_part_is_marked_while_alive() -> None:
    anchors = (3, 8, 12, 14, 15)
    for turn in range(6):
        marked = select_breakpoints(anchors, set(anchors), slots=3, turn=turn, keep=12)
        assert 12 in marked
        assert 15 in marked


def snapshot(texts: dict[str, str]) -> Snapshot:
    docs = tuple(
        Document.from_text(path, text, size=len(text), mtime_ns=0)
        for path, text in sorted(texts.items())
    )
    return Snapshot(Path("/corpus"), 1, time.time(), docs, ())


def test_the_request_sends_the_old_copy_in_place_and_marks_the_current_one() -> None:
    old = snapshot({f"d{i}.md": f"Document {i} says {i}.\n" for i in range(6)})
    docs = [DocInfo(d.path, 300, d.sha256, last_change=NOW - 90 * 86_400.0) for d in old.documents]
    before = plan(docs)
    new = snapshot({**{d.path: d.text for d in old.documents}, "d0.md": "Document 0 now says 7.\n"})
    after = plan(
        [DocInfo(d.path, 300, d.sha256, last_change=NOW - 90 * 86_400.0) for d in new.documents],
        before,
        before.anchors,
    )
    assert after.superseded == frozenset({0})
    old_copy = old.get("d0.md")
    assert old_copy is not None
    params = build_request(
        after, new, "What does d0 say?", model="m", max_tokens=10,
        superseded={("d0.md", after.keys[0]): old_copy},
    )  # fmt: skip
    blocks = [b for b in params["messages"][0]["content"] if b["type"] == "document"]
    assert [b["title"] for b in blocks] == [*(d.path for d in old.documents), "d0.md"]
    assert blocks[0]["source"]["data"] == "Document 0 says 0.\n"
    assert "context" not in blocks[0]
    assert blocks[-1]["source"]["data"] == "Document 0 now says 7.\n"
    assert blocks[-1]["context"] == SUPERSEDING


def _cite(index: int, quote: str, start: int) -> Any:
    return SimpleNamespace(
        type="char_location", document_index=index, cited_text=quote,
        start_char_index=start, end_char_index=start + len(quote),
    )  # fmt: skip


def test_a_citation_of_an_old_copy_points_at_the_current_file_or_is_dropped() -> None:
    old = snapshot({f"d{i}.md": f"Line one of {i}.\nLine two of {i}.\n" for i in range(6)})
    docs = [DocInfo(d.path, 300, d.sha256, last_change=NOW - 90 * 86_400.0) for d in old.documents]
    before = plan(docs)
    new_text = "A new first line.\nLine one of 0.\n"
    new = snapshot({**{d.path: d.text for d in old.documents}, "d0.md": new_text})
    after = plan(
        [DocInfo(d.path, 300, d.sha256, last_change=NOW - 90 * 86_400.0) for d in new.documents],
        before,
        before.anchors,
    )
    answer = [
        SimpleNamespace(
            type="text", text="Kept.",
            citations=[_cite(0, "Line one of 0.", 0), _cite(0, "Line two of 0.", 16)],
        )
    ]  # fmt: skip
    mapped = map_answer(answer, after, new)
    assert [(c.path, c.start_line, c.quote) for c in mapped.citations] == [
        ("d0.md", 2, "Line one of 0.")
    ]


async def test_an_edit_under_a_warm_cache_writes_about_one_document_and_answers_from_it(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    for i in range(8):  # enough documents that one is a small share of the corpus
        (corpus / f"notes-{i}.md").write_text(
            "".join(f"Note {i}.{n}: team {i} reviews item {n} every week.\n" for n in range(120))
        )
    emulator.freeze()
    start = emulator.post("clock", {"advance": 0})["now"]
    now = [start]
    for path in corpus.rglob("*"):  # a settled folder: nothing edited this month
        os.utime(path, (start - 30 * 86_400, start - 30 * 86_400))
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "s", clock=lambda: now[0], watch=False
    ) as engine:
        first = await engine.ask("When does the on-call rotation hand over?")
        plan = engine.current.shards[0].plan
        first_doc = plan.order[0]
        (corpus / first_doc).write_text(
            (corpus / first_doc).read_text() + "\nThe new fact is ZEBRA-42.\n"
        )
        now[0] += 60
        emulator.advance(60)
        await engine.refresh()
        assert engine.current.shards[0].plan.superseded == frozenset({0})
        second = await engine.ask("What is the new fact ZEBRA-42?")

        # Two hours on, every entry has lapsed: the next request carries no old copy.
        now[0] += 7_200
        emulator.advance(7_200)
        third = await engine.ask("What is the new fact ZEBRA-42?")
        assert not engine.current.shards[0].plan.superseded

    full = first.usage.cache_write_5m_tokens + first.usage.cache_write_1h_tokens
    written = second.usage.cache_write_5m_tokens + second.usage.cache_write_1h_tokens
    assert 0 < written < full / 4
    assert second.usage.cache_read_tokens >= full
    assert "ZEBRA-42" in second.text
    current_text = (corpus / first_doc).read_text()
    assert all(c.quote in current_text for c in second.citations if c.path == first_doc)
    calls = [e for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"]
    last = sorted(calls, key=lambda e: e["time"])[-1]["body"]
    titles = [b["title"] for b in last["messages"][0]["content"] if b["type"] == "document"]
    assert len(titles) == len(set(titles))
    assert "ZEBRA-42" in third.text
