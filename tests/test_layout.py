"""The first layout planner, as properties over generated corpora."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.plan.layout import (
    MAX_CORPUS_BREAKPOINTS,
    PlannedDocument,
    plan_layout,
    safe_minimum,
)

documents = st.lists(
    st.builds(
        PlannedDocument,
        path=st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8})?\.md", fullmatch=True),
        tokens=st.integers(1, 20_000),
    ),
    max_size=60,
    unique_by=lambda d: d.path,
)
minimums = st.sampled_from([512, 1024, 2048, 4096])


@given(documents, minimums, st.integers(0, 3_000))
def test_every_breakpoint_prefix_is_above_the_minimum(docs, minimum, instructions) -> None:  # type: ignore[no-untyped-def]
    plan = plan_layout(docs, min_cacheable_tokens=minimum, instructions_tokens=instructions)
    for block in plan.blocks:
        if block.ttl is not None:
            assert block.prefix_tokens >= safe_minimum(minimum)


@given(documents, minimums)
def test_at_most_three_breakpoints_leaving_one_for_conversations(docs, minimum) -> None:  # type: ignore[no-untyped-def]
    plan = plan_layout(docs, min_cacheable_tokens=minimum, instructions_tokens=100)
    assert plan.breakpoints <= MAX_CORPUS_BREAKPOINTS


@given(documents, minimums)
def test_every_document_is_placed_once_in_path_order(docs, minimum) -> None:  # type: ignore[no-untyped-def]
    plan = plan_layout(docs, min_cacheable_tokens=minimum, instructions_tokens=100)
    assert plan.order == tuple(sorted(d.path for d in docs))
    assert plan.total_tokens == 100 + sum(d.tokens for d in docs)


@given(documents, minimums)
def test_the_same_documents_in_any_order_give_the_same_plan(docs, minimum) -> None:  # type: ignore[no-untyped-def]
    forward = plan_layout(docs, min_cacheable_tokens=minimum, instructions_tokens=50)
    backward = plan_layout(docs[::-1], min_cacheable_tokens=minimum, instructions_tokens=50)
    assert forward == backward


@given(documents, minimums)
def test_a_corpus_over_the_minimum_is_cached_and_one_under_is_not(docs, minimum) -> None:  # type: ignore[no-untyped-def]
    plan = plan_layout(docs, min_cacheable_tokens=minimum, instructions_tokens=10)
    if not docs:
        assert not plan.cached
        assert plan.blocks == ()
    elif plan.total_tokens >= safe_minimum(minimum):
        assert plan.cached
        assert plan.blocks[-1].ttl is not None  # the whole corpus sits before a breakpoint
    else:
        assert not plan.cached
        assert plan.breakpoints == 0
        assert "below" in plan.note


def test_a_small_corpus_is_served_uncached_and_says_why() -> None:
    plan = plan_layout(
        [PlannedDocument("a.md", 100)], min_cacheable_tokens=1024, instructions_tokens=80
    )
    assert not plan.cached
    assert plan.note.startswith("the corpus is 180 tokens, below the 1,024-token minimum")


def test_a_large_corpus_uses_three_blocks_of_similar_size() -> None:
    docs = [PlannedDocument(f"doc{i:02d}.md", 1_000) for i in range(30)]
    plan = plan_layout(docs, min_cacheable_tokens=1024, instructions_tokens=100)
    assert [len(b.paths) for b in plan.blocks] == [10, 10, 10]
    assert [b.ttl for b in plan.blocks] == ["5m", "5m", "5m"]
