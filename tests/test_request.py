"""The request builder: cache-friendly, deterministic, and citations mapped to lines."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corpus_cache.api.request import INSTRUCTIONS, build_request, map_answer
from corpus_cache.corpus.documents import Document, Snapshot
from corpus_cache.plan.layout import plan_shard
from corpus_cache.plan.stability import DocInfo


def snapshot(texts: dict[str, str]) -> Snapshot:
    docs = tuple(
        Document.from_text(path, text, size=len(text), mtime_ns=0)
        for path, text in sorted(texts.items())
    )
    return Snapshot(Path("/corpus"), 1, time.time(), docs, ())


TEXTS = {f"doc{i}.md": f"Title {i}\nline two of {i}\nline three of {i}\n" for i in range(9)}


def plan_for(snap: Snapshot, tokens: int = 400) -> Any:
    return plan_shard(
        [DocInfo(d.path, tokens, d.sha256, last_change=0.0) for d in snap.documents],
        min_cacheable_tokens=512,
        instructions_tokens=60,
        now=1e9,
    )


def test_documents_carry_citations_and_marked_anchors_carry_cache_control() -> None:
    snap = snapshot(TEXTS)
    plan = plan_for(snap)
    assert len(plan.anchors) > 3  # more anchors than one request may mark
    marked = [plan.anchors[0], plan.anchors[2], plan.anchors[-1]]
    params = build_request(
        plan, snap, "What is on line two?", model="m", max_tokens=100, marked=marked
    )
    content = params["messages"][0]["content"]
    documents = content[:-1]
    assert all(block["citations"] == {"enabled": True} for block in documents)
    assert [i for i, block in enumerate(documents) if "cache_control" in block] == marked
    assert content[-1] == {"type": "text", "text": "What is on line two?"}
    assert params["system"] == [{"type": "text", "text": INSTRUCTIONS}]


def test_by_default_the_last_four_anchors_are_marked_three_in_a_conversation() -> None:
    snap = snapshot(TEXTS)
    plan = plan_for(snap)
    assert len(plan.anchors) > 4
    params = build_request(plan, snap, "Q?", model="m", max_tokens=100)
    documents = params["messages"][0]["content"][:-1]
    marked = [i for i, block in enumerate(documents) if "cache_control" in block]
    assert marked == list(plan.anchors[-4:])

    follow_up = build_request(
        plan, snap, "And then?", model="m", max_tokens=100, conversation=[("Q?", "A.")]
    )
    blocks = [b for m in follow_up["messages"] for b in m["content"] if "cache_control" in b]
    assert len(blocks) == 4  # three in the corpus, the fourth on the conversation so far
    assert follow_up["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_more_anchors_than_the_api_allows_are_refused() -> None:
    snap = snapshot(TEXTS)
    plan = plan_for(snap)
    with pytest.raises(ValueError, match="at most 4"):
        build_request(plan, snap, "Q?", model="m", max_tokens=100, marked=plan.anchors[:5])
    with pytest.raises(ValueError, match="at most 3"):
        build_request(
            plan, snap, "Q?", model="m", max_tokens=100, marked=plan.anchors[:4],
            conversation=[("Q?", "A.")],
        )  # fmt: skip


def test_two_questions_share_every_byte_before_the_question() -> None:
    snap = snapshot(TEXTS)
    plan = plan_for(snap)
    first = build_request(plan, snap, "First question?", model="m", max_tokens=100)
    second = build_request(plan, snap, "Another one entirely?", model="m", max_tokens=100)
    assert first["system"] == second["system"]
    assert first["messages"][0]["content"][:-1] == second["messages"][0]["content"][:-1]


def citation(index: int, text: str, quote: str) -> SimpleNamespace:
    start = text.index(quote)
    return SimpleNamespace(
        type="char_location",
        document_index=index,
        start_char_index=start,
        end_char_index=start + len(quote),
        cited_text=quote,
    )


def test_citations_map_to_path_and_lines() -> None:
    snap = snapshot(TEXTS)
    plan = plan_for(snap)
    doc3 = TEXTS["doc3.md"]
    content = [
        SimpleNamespace(type="text", text="Intro. ", citations=None),
        SimpleNamespace(
            type="text",
            text="Line two says so.\n",
            citations=[citation(3, doc3, "line two of 3\nline three")],
        ),
    ]
    mapped = map_answer(content, plan, snap)
    assert mapped.text == "Intro. Line two says so. [1]"
    (cited,) = mapped.citations
    assert (cited.path, cited.start_line, cited.end_line) == ("doc3.md", 2, 3)
    assert cited.quote == "line two of 3\nline three"


def test_a_citation_to_an_unknown_document_is_dropped() -> None:
    snap = snapshot(TEXTS)
    content = [SimpleNamespace(type="text", text="x", citations=[citation(99, "abc", "b")])]
    assert map_answer(content, plan_for(snap), snap).citations == ()
