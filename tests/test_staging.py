"""Staged builds (plan/staging.py): slices that each fit the input-token capacity, as
properties over generated corpora."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.plan.layout import Plan, plan_shard, safe_minimum
from corpus_cache.plan.stability import DocInfo
from corpus_cache.plan.staging import (
    FIRST_WRITES,
    LATER_WRITES,
    Staging,
    Unbuildable,
    about,
    build_seconds,
    prefix_tokens,
    refined,
    slice_capacity,
    stage,
)
from support.planning import NOW, corpora, minimums


def plan(docs: list[DocInfo], minimum: int) -> Plan:
    return plan_shard(docs, min_cacheable_tokens=minimum, instructions_tokens=120, now=NOW)


capacities = st.integers(2_000, 60_000)


@settings(max_examples=200, deadline=None)
@given(corpora(max_docs=60), minimums, capacities)
def test_every_slice_fits_the_capacity_and_ends_above_the_minimum(
    docs: list[DocInfo], minimum: int, capacity: int
) -> None:
    p = plan(docs, minimum)
    staged = stage(p, capacity)
    if not p.cached:
        assert isinstance(staged, Staging)
        assert not staged.todo
        return
    if isinstance(staged, Unbuildable):
        # Only when a document, or the first cacheable prefix, is larger than a slice.
        assert staged.tokens > capacity
        return
    prefix = prefix_tokens(p)
    assert staged.todo[-1].end == p.anchors[-1]
    done = 0
    for piece in staged.todo:
        assert piece.tokens == prefix[piece.end] - done <= capacity
        assert prefix[piece.end] >= safe_minimum(minimum)
        done = prefix[piece.end]


@settings(max_examples=200, deadline=None)
@given(corpora(max_docs=60), minimums, capacities)
def test_every_anchor_of_the_layout_is_written_by_some_slice_within_four_breakpoints(
    docs: list[DocInfo], minimum: int, capacity: int
) -> None:
    p = plan(docs, minimum)
    staged = stage(p, capacity)
    if not isinstance(staged, Staging) or not staged.todo:
        return
    written = [a for piece in staged.todo for a in (*piece.anchors, piece.end)]
    assert set(p.anchors) <= set(written)
    assert len(staged.todo[0].anchors) + 1 <= FIRST_WRITES
    assert all(len(piece.anchors) + 1 <= LATER_WRITES for piece in staged.todo[1:])
    # The refined plan has the same documents, with a block end at every slice end.
    assert staged.plan.order == p.order
    assert staged.plan.keys == p.keys
    assert set(staged.ends) | set(p.anchors) == set(staged.plan.anchors)
    assert staged.plan.total_tokens == p.total_tokens


@settings(max_examples=150, deadline=None)
@given(corpora(max_docs=60), minimums, capacities, st.data())
def test_a_build_resumes_after_the_furthest_live_entry_and_counts_the_same_slices(
    docs: list[DocInfo], minimum: int, capacity: int, data: st.DataObject
) -> None:
    p = plan(docs, minimum)
    fresh = stage(p, capacity)
    if not isinstance(fresh, Staging) or len(fresh.todo) < 2:
        return
    built = data.draw(st.integers(0, len(fresh.todo) - 2))
    live = [piece.end for piece in fresh.todo[: built + 1]]
    resumed = stage(p, capacity, live=live)
    assert isinstance(resumed, Staging)
    assert resumed.todo == fresh.todo[built + 1 :]
    assert resumed.ends == fresh.ends
    assert resumed.done == built + 1


def test_a_prefix_within_the_capacity_takes_one_request_per_four_anchors() -> None:
    small = [DocInfo(f"d{i}.md", 3_000, f"k{i}", NOW - 10 * 86_400) for i in range(8)]
    p = plan(small, 1024)
    staged = stage(p, slice_capacity(450_000))
    assert isinstance(staged, Staging)
    assert len(p.anchors) == 5
    assert [(piece.anchors, piece.end) for piece in staged.todo] == [
        (p.anchors[:3], p.anchors[3]),
        ((), p.anchors[4]),
    ]


def test_a_document_larger_than_a_slice_is_named() -> None:
    docs = [
        DocInfo("small.md", 3_000, "k0", NOW - 10 * 86_400),
        DocInfo("huge.md", 40_000, "k1", NOW - 9 * 86_400),
    ]
    p = plan(docs, 1024)
    staged = stage(p, slice_capacity(30_000))
    assert isinstance(staged, Unbuildable)
    assert p.order[staged.position] == "huge.md"
    assert staged.tokens == 40_000


def test_the_refined_plan_of_an_uncut_plan_is_the_plan() -> None:
    docs = [DocInfo(f"d{i}.md", 3_000, f"k{i}", NOW - 10 * 86_400) for i in range(8)]
    p = plan(docs, 1024)
    assert refined(p, p.anchors) == p


def test_a_build_takes_the_time_the_bucket_needs_to_refill() -> None:
    # 30,000 per minute is 500 a second: two more slices of 25,000 wait 50 s each.
    seconds = build_seconds(
        [25_000, 25_000, 25_000], input_tokens_per_minute=30_000, available=30_000, prefill=1e12
    )
    assert round(seconds) == 90  # the first fits at once; then 40 s and 50 s
    assert about(seconds) == "about 2 min"
    assert about(20) == "under a minute"
