"""The cache-optimal planner, as properties over generated corpora and edits."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.plan.anchors import LOOKBACK, MAX_ANCHORS, select_breakpoints
from corpus_cache.plan.layout import (
    MAX_BREAKPOINTS,
    Layout,
    Plan,
    plan_corpus,
    plan_shard,
    safe_minimum,
)
from corpus_cache.plan.stability import HOT_WINDOW, DocInfo, EditPattern, stability_order
from support.planning import DAY, NOW, TOKENS, corpora, edited, minimums


def plan(docs: list[DocInfo], minimum: int, now: float = NOW, previous: Plan | None = None) -> Plan:
    return plan_shard(
        docs, min_cacheable_tokens=minimum, instructions_tokens=120, now=now, previous=previous
    )


Prefix = tuple[tuple[str, str], ...]


def prefix_at(p: Plan, position: int) -> Prefix:
    """What a cache entry written at this document position holds."""
    return tuple(zip(p.order, p.keys, strict=True))[: position + 1]


def anchor_prefixes(p: Plan) -> set[Prefix]:
    return {prefix_at(p, a) for a in p.anchors}


def next_request_reads(p: Plan, cached: set[Prefix], turn: int = 0) -> int:
    """Tokens the next request reads, by the API's rules: each marked breakpoint looks back
    at most 20 positions for an entry; the longest hit is read."""
    alive = {a for a in p.anchors if prefix_at(p, a) in cached}
    marked = select_breakpoints(p.anchors, alive, slots=MAX_BREAKPOINTS, turn=turn)
    assert len(marked) <= MAX_BREAKPOINTS
    through: list[int] = []
    running = p.instructions_tokens
    order_tokens = TOKENS
    for path in p.order:
        running += order_tokens[path]
        through.append(running)
    hits = [
        q for b in marked for q in range(b, max(-1, b - LOOKBACK), -1) if prefix_at(p, q) in cached
    ]
    return through[max(hits)] if hits else 0


def block_index_of(p: Plan, path: str) -> int:
    return next(i for i, b in enumerate(p.blocks) if path in b.paths)


@given(corpora(), minimums)
def test_every_breakpoint_prefix_is_above_the_minimum(docs: list[DocInfo], minimum: int) -> None:
    for block in plan(docs, minimum).blocks:
        if block.ttl is not None:
            assert block.prefix_tokens >= safe_minimum(minimum)


@given(corpora(), minimums, st.data())
def test_a_request_marks_at_most_three_anchors_always_the_end(
    docs: list[DocInfo], minimum: int, data: st.DataObject
) -> None:
    p = plan(docs, minimum)
    assert len(p.anchors) <= MAX_ANCHORS
    if not p.anchors:
        return
    alive = data.draw(st.sets(st.sampled_from(p.anchors)))
    marked = select_breakpoints(p.anchors, alive, slots=3, turn=data.draw(st.integers(0, 9)))
    assert len(marked) <= MAX_BREAKPOINTS
    assert marked[-1] == p.anchors[-1]
    assert set(marked) <= set(p.anchors)


@given(corpora(), minimums)
def test_every_document_is_placed_exactly_once(docs: list[DocInfo], minimum: int) -> None:
    p = plan(docs, minimum)
    assert sorted(p.order) == sorted(d.path for d in docs)
    assert p.total_tokens == 120 + sum(d.tokens for d in docs)


@given(corpora(), minimums)
def test_plans_are_deterministic_whatever_the_input_order(
    docs: list[DocInfo], minimum: int
) -> None:
    assert plan(docs, minimum) == plan(list(reversed(docs)), minimum) == plan(docs, minimum)


@given(corpora(), minimums)
def test_stable_documents_come_before_hot_ones(docs: list[DocInfo], minimum: int) -> None:
    p = plan(docs, minimum)
    ordered = sorted(docs, key=lambda d: p.order.index(d.path))
    hot = [NOW - d.last_change < HOT_WINDOW for d in ordered]
    assert hot == sorted(hot)


@settings(max_examples=200)
@given(corpora(), minimums, st.data())
def test_an_edit_invalidates_only_the_blocks_from_its_own_onward(
    docs: list[DocInfo], minimum: int, data: st.DataObject
) -> None:
    TOKENS.clear()
    TOKENS.update({d.path: d.tokens for d in docs})
    before = plan(docs, minimum)
    if not before.cached:
        return
    index = data.draw(st.integers(0, len(docs) - 1))
    block = block_index_of(before, docs[index].path)
    after = plan(edited(docs, index, NOW + 60), minimum, NOW + 60, previous=before)
    # With every entry of the previous plan alive, the next request reads everything up to
    # the block holding the edited document, and rewrites only from there.
    expected = before.blocks[block - 1].prefix_tokens if block else 0
    assert next_request_reads(after, anchor_prefixes(before)) >= expected


@settings(max_examples=200)
@given(corpora(), minimums, st.data())
def test_after_its_first_edit_a_documents_edits_rewrite_at_most_the_tail_block(
    docs: list[DocInfo], minimum: int, data: st.DataObject
) -> None:
    TOKENS.clear()
    TOKENS.update({d.path: d.tokens for d in docs})
    index = data.draw(st.integers(0, len(docs) - 1))
    first = plan(docs, minimum)
    once = edited(docs, index, NOW + 60)
    second = plan(once, minimum, NOW + 60, previous=first)
    twice = edited(once, index, NOW + 120)
    TOKENS[docs[index].path] = twice[index].tokens
    third = plan(twice, minimum, NOW + 120, previous=second)
    if not second.cached or len(second.blocks) < 2:
        return
    assert block_index_of(second, docs[index].path) == len(second.blocks) - 1
    # The second edit rewrites the tail block at most: everything before it is read.
    assert next_request_reads(third, anchor_prefixes(second)) >= second.blocks[-2].prefix_tokens


def test_an_edit_to_a_cold_document_moves_only_that_document() -> None:
    docs = [
        DocInfo(f"doc{i:02d}.md", 2_000, f"k{i}", NOW - (100 - i) * DAY, first_seen=NOW - 200 * DAY)
        for i in range(20)
    ]
    before = plan(docs, 1024)
    after = plan(edited(docs, 3, NOW), 1024, NOW, previous=before)
    assert after.order == (*(p for p in before.order if p != "doc03.md"), "doc03.md")


def test_anchors_close_the_stable_part_and_each_hot_document() -> None:
    cold = [
        DocInfo(f"cold{i:02d}.md", 3_000, f"c{i}", NOW - 300 * DAY, first_seen=NOW - 300 * DAY)
        for i in range(20)
    ]
    hot = [
        DocInfo(f"hot{i}.md", 1_000, f"h{i}", NOW - 600 * (3 - i), edits=5, first_seen=NOW - DAY)
        for i in range(3)
    ]
    p = plan(cold + hot, 1024)
    assert p.order[-3:] == ("hot0.md", "hot1.md", "hot2.md")
    # An anchor closes the cold part and each hot document, so any edit rewrites one file.
    assert {19, 20, 21, 22} <= set(p.anchors)
    assert p.stable_anchor == 19  # what a question reads through after a hot file's edit


def pattern_of(edits: str) -> EditPattern:
    pattern = EditPattern()
    for path in edits:
        pattern = pattern.after(path)
    return pattern


def test_the_next_edit_is_guessed_from_how_edits_have_come() -> None:
    # A writer revising one file at a time: the file just saved is the likeliest next.
    writer = pattern_of("aaaabbbbbbab")
    assert writer.repeat_chance > 0.6
    weights = {p: writer.next_edit_weight(p, "aaaabbbbbbab".count(p)) for p in "abc"}
    assert max(weights, key=weights.__getitem__) == "b"
    # Going round several files: the one edited most is the likeliest, not the last.
    rounds = pattern_of("abacabadabac")
    assert rounds.repeat_chance < 0.2
    weights = {p: rounds.next_edit_weight(p, "abacabadabac".count(p)) for p in "abcd"}
    assert max(weights, key=weights.__getitem__) == "a"
    assert EditPattern().next_edit_weight("a", 0) == 0.0


def test_an_edit_reorders_what_it_rewrites_anyway_the_likeliest_next_edit_last() -> None:
    cold = [DocInfo(f"c{i}.md", 3_000, f"c{i}", NOW - 300 * DAY) for i in range(5)]
    hot = [DocInfo(f"h{i}.md", 1_000, f"h{i}", NOW - 600 * (4 - i), edits=1) for i in range(4)]
    before = stability_order(cold + hot, NOW)
    previous = tuple((d.path, d.key) for d in before)
    assert [d.path for d in before[5:]] == ["h0.md", "h1.md", "h2.md", "h3.md"]
    # h1 is edited: h0 keeps its place; h1's new version, h2 and h3 are written anyway, and
    # go in the order of how likely each is to be edited next (per token).
    weights = {"h1.md": 0.2, "h2.md": 0.7, "h3.md": 0.1}
    changed = [
        dataclasses.replace(
            d, key=d.key + ("'" if d.path == "h1.md" else ""), edit_weight=weights.get(d.path, 0)
        )
        for d in hot
    ]
    after = stability_order(cold + changed, NOW + 60, previous, previous_tail=5)
    assert [d.path for d in after] == [*(d.path for d in cold), "h0.md", "h3.md", "h1.md", "h2.md"]


@given(corpora(), minimums)
def test_the_stable_anchor_ends_the_cold_part_else_the_corpus(
    docs: list[DocInfo], minimum: int
) -> None:
    p = plan(docs, minimum)
    if not p.cached:
        assert p.stable_anchor is None
        return
    before_tail = [a for a in p.anchors if a < p.tail_start]
    assert p.stable_anchor == (before_tail[-1] if before_tail else p.anchors[-1])
    assert p.stable_tokens == p.tokens_through(p.stable_anchor)


@given(corpora(), minimums)
def test_an_edit_to_the_tail_rewrites_itself_and_on_average_half_of_the_rest(
    docs: list[DocInfo], minimum: int
) -> None:
    p = plan(docs, minimum)
    tail = p.sizes[p.tail_start :]
    if not tail:
        assert p.edit_tokens == 0
        return
    # the edited document moves to the end: with k documents of the tail equally likely to
    # be edited, it rewrites itself and on average half of the k - 1 others
    mean_size = sum(tail) / len(tail)
    assert p.edit_tokens == pytest.approx((1 + (len(tail) - 1) / 2) * mean_size)
    assert mean_size <= p.edit_tokens <= sum(tail) * (1 + 1e-9)


def test_a_small_corpus_is_served_uncached_and_says_why() -> None:
    p = plan([DocInfo("a.md", 100, "k", NOW - DAY * 9)], 1024)
    assert not p.cached
    assert p.stable_anchor is None
    assert p.note.startswith("the corpus is 220 tokens, below the 1,024-token minimum")


# --- shards ---------------------------------------------------------------------------


def layout(docs: list[DocInfo], budget: int, previous: Layout | None = None) -> Layout:
    return plan_corpus(
        docs, min_cacheable_tokens=1024, instructions_tokens=120, budget_tokens=budget,
        now=NOW, previous=previous,
    )  # fmt: skip


@given(corpora(max_docs=60), st.integers(8_000, 60_000))
def test_every_shard_fits_the_budget(docs: list[DocInfo], budget: int) -> None:
    result = layout(docs, budget)
    for shard in result.shards:
        assert shard.plan.total_tokens <= budget
    placed = [path for shard in result.shards for path in shard.plan.order]
    assert sorted(placed + list(result.oversized)) == sorted(d.path for d in docs)


@given(corpora(max_docs=60), st.integers(8_000, 40_000), st.integers(1, 3_000))
def test_a_new_file_does_not_move_existing_ones(
    docs: list[DocInfo], budget: int, size: int
) -> None:
    before = layout(docs, budget)
    newcomer = DocInfo("new/zzz.md", size, "new", NOW, first_seen=NOW)
    after = layout([*docs, newcomer], budget, previous=before)
    old, new = before.shard_of(), after.shard_of()
    assert all(new[path] == shard for path, shard in old.items())


# --- the optimiser against brute force ------------------------------------------------


@given(
    st.lists(st.tuples(st.integers(1, 60), st.floats(0, 1)), min_size=2, max_size=9),
    st.integers(0, 120),
    st.integers(1, 4),
    st.data(),
)
def test_the_cut_optimiser_finds_the_cheapest_cuts(
    docs: list[tuple[int, float]], minimum: int, cuts: int, data: st.DataObject
) -> None:
    import itertools

    from corpus_cache.plan.breakpoints import choose_cuts

    prefix, running = [], 10
    for tokens, _ in docs:
        running += tokens
        prefix.append(running)
    rates = [rate for _, rate in docs]
    n = len(docs)
    eligible = [i for i in range(n - 1) if prefix[i] >= minimum]
    must = data.draw(st.sampled_from([None, *eligible]))

    def cost(chosen: tuple[int, ...]) -> float:
        total, start, spent = prefix[-1], -1, 0.0
        for end in [*chosen, n - 1]:
            spent += (total - (prefix[start] if start >= 0 else 0)) * sum(
                rates[start + 1 : end + 1]
            )
            start = end
        return spent

    best = min(
        cost(c)
        for k in range(cuts + 1)
        for c in itertools.combinations(eligible, k)
        if must is None or must in c
    )
    got = choose_cuts(prefix, rates, minimum=minimum, cuts=cuts, must=must)
    assert len(got) <= cuts
    assert all(prefix[c] >= minimum for c in got)
    assert must is None or must in got
    assert cost(tuple(got)) <= best * (1 + 1e-9) + 1e-12


def test_the_window_budget_is_the_window_less_a_reserve_and_below_a_price_tier() -> None:
    from corpus_cache.models.catalog import load_catalog
    from corpus_cache.plan.budget import window_budget

    catalog = load_catalog()
    assert window_budget(catalog.get("claude-sonnet-5-5"), 16_000) == 984_000
    assert window_budget(catalog.get("claude-haiku-4-5"), 16_000) == 184_000
    assert window_budget(catalog.get("claude-haiku-5-5"), 16_000) == 84_000  # 5x above 100k


def test_shards_sized_by_price_or_by_the_limits_cost_that_or_build_in_that_time() -> None:
    from corpus_cache.models.catalog import load_catalog
    from corpus_cache.models.pricing import Usage, cost_usd
    from corpus_cache.plan.budget import default_budget

    catalog = load_catalog()
    for name in ("claude-sonnet-5-5", "claude-sonnet-4-6", "claude-opus-5-5", "claude-haiku-4-5"):
        model = catalog.get(name)
        budget = default_budget(model, warm_question_usd=0.05)
        warm = cost_usd(Usage(input_tokens=50, cache_read_tokens=budget, output_tokens=500), model)
        assert warm <= 0.0501, name  # or the window is the smaller bound
    sonnet = catalog.get("claude-sonnet-5-5")
    assert 400_000 < default_budget(sonnet, warm_question_usd=0.05) < 500_000
    assert default_budget(catalog.get("claude-sonnet-4-6"), warm_question_usd=0.05) < 160_000
    # At tier 1's 30,000 input tokens a minute, five minutes of the bucket.
    limited = default_budget(sonnet, input_tokens_per_minute=30_000, build_minutes=5)
    assert limited == 150_000
    assert default_budget(sonnet, input_tokens_per_minute=30_000) == 984_000  # off by default
    assert default_budget(sonnet) == 984_000


@given(
    name=st.sampled_from(["claude-sonnet-5-5", "claude-sonnet-4-6", "claude-haiku-4-5"]),
    corpus_tokens=st.integers(min_value=1, max_value=10_000_000),
    usd=st.one_of(st.none(), st.just(0.0), st.floats(min_value=0.01, max_value=1.0)),
)
def test_a_corpus_within_one_window_stays_one_shard_unless_a_price_is_set(
    name: str, corpus_tokens: int, usd: float | None
) -> None:
    from corpus_cache.models.catalog import load_catalog
    from corpus_cache.plan.budget import (
        DEFAULT_WARM_QUESTION_USD,
        default_budget,
        price_budget,
        window_budget,
    )

    model = load_catalog().get(name)
    window = window_budget(model)
    budget = default_budget(model, warm_question_usd=usd, corpus_tokens=corpus_tokens)
    if usd == 0.0 or (usd is None and corpus_tokens <= window):
        assert budget == window  # not by price: the window's shards (one, within it)
    else:
        # By price: the default's once the corpus needs several shards anyway, or the set one.
        price = DEFAULT_WARM_QUESTION_USD if usd is None else usd
        assert budget == min(window, price_budget(model, price))


def test_a_shorter_lookback_marks_the_live_anchor_the_next_breakpoint_cannot_reach() -> None:
    # The live anchor 5 is 7 positions behind the next one: within the documented 20,
    # beyond a lookback of 5 (a model table entry's `cache_lookback`, from `probe`).
    anchors, alive = [5, 12, 30], {5}
    assert select_breakpoints(anchors, alive, slots=2, turn=0) == [12, 30]
    assert select_breakpoints(anchors, alive, slots=2, turn=0, lookback=5) == [5, 30]
