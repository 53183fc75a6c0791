"""The local token estimate (api/estimate.py) and the layout's margin for it (plan/layout.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.api.estimate import (
    MIN_SAMPLES,
    SAMPLES_PER_START,
    Sketch,
    calibrate,
    choose_samples,
    sketch,
)
from corpus_cache.plan.layout import plan_corpus, safe_minimum
from corpus_cache.plan.stability import DocInfo

NOW = 1_800_000_000.0
PROSE = "The regional depot books every urgent shipment before the nightly cutoff. " * 20
CODE = "def route(items: list[int]) -> int:\n    return sum(x * 2 for x in items if x > 3)\n" * 10
DATA = "\n".join(f"{i},{i * 37 % 1000},{i * 3.25:.2f},{i % 7}" for i in range(60))
CJK = "東京の倉庫は毎晩出荷を確認して配送ルートを更新します。" * 10


def test_each_kind_of_text_is_told_apart() -> None:
    assert sketch(PROSE, "a.md").kind == "prose"
    assert sketch(CODE, "a.py").kind == "code"
    assert sketch(DATA, "a.csv").kind == "data"
    assert sketch(CJK, "a.txt").kind == "cjk"
    assert sketch("Добрый день, это заметка о складе и доставке. " * 10, "a.md").kind == (
        "other-script"
    )


def test_a_longer_text_of_the_same_kind_has_a_proportionally_larger_prior() -> None:
    one, three = sketch(PROSE, "a.md"), sketch(PROSE * 3, "a.md")
    assert 2.8 < three.prior / one.prior < 3.0  # the title and framing are counted once


sketches = st.dictionaries(
    st.integers(0, 10_000),
    st.builds(Sketch, st.sampled_from(["prose", "code", "cjk", "data"]), st.floats(1, 5_000)),
    max_size=300,
)


@given(sketches, st.dictionaries(st.sampled_from(["prose", "code", "cjk"]), st.integers(0, 9)))
def test_samples_stay_within_the_budget_and_cover_every_kind_that_needs_them(
    docs: dict[int, Sketch], have: dict[str, int]
) -> None:
    chosen = choose_samples(docs, have)
    assert len(chosen) == len(set(chosen)) <= SAMPLES_PER_START
    assert set(chosen) <= set(docs)
    kinds = {s.kind for s in docs.values()}
    needing = {k for k in kinds if have.get(k, 0) < MIN_SAMPLES}
    if len(needing) * MIN_SAMPLES <= SAMPLES_PER_START:
        for kind in needing:
            of_kind = sum(1 for s in docs.values() if s.kind == kind)
            picked = sum(1 for k in chosen if docs[k].kind == kind)
            assert picked >= min(of_kind, MIN_SAMPLES - have.get(kind, 0))
    assert all(docs[k].kind in needing for k in chosen)


def test_no_sample_is_counted_when_every_kind_present_is_calibrated() -> None:
    docs = {n: Sketch("prose" if n % 2 else "code", 100.0 + n) for n in range(500)}
    assert choose_samples(docs, {"prose": MIN_SAMPLES, "code": MIN_SAMPLES}) == []
    assert len(choose_samples(docs, {"prose": MIN_SAMPLES})) == SAMPLES_PER_START


def test_samples_are_spread_over_a_kinds_sizes_not_bunched() -> None:
    docs = {n: Sketch("prose", float(n + 1)) for n in range(1_000)}
    chosen = sorted(choose_samples(docs, {}))
    assert chosen[0] < 400
    assert chosen[-1] > 900


@given(
    st.lists(
        st.tuples(st.sampled_from(["prose", "code"]), st.floats(10, 5_000), st.floats(0.7, 1.3)),
        min_size=1,
        max_size=30,
    )
)
def test_the_error_bound_covers_every_sample_it_was_fitted_on(
    rows: list[tuple[str, float, float]],
) -> None:
    samples = [(kind, prior, max(1, round(prior * 1.4 * noise))) for kind, prior, noise in rows]
    calibration = calibrate(samples)
    for kind, prior, exact in samples:
        estimate = calibration.estimate(Sketch(kind, prior))
        fit = calibration.fit(kind)
        if fit.error < 0.6:  # not capped
            assert abs(exact - prior * fit.ratio) <= fit.error * prior * fit.ratio + 1e-6
        assert estimate.upper >= estimate.tokens


def test_a_calibration_for_one_kind_does_not_stand_for_another_without_a_wide_bound() -> None:
    calibration = calibrate([("prose", 100.0, 150), ("prose", 200.0, 300), ("prose", 50.0, 75)])
    assert calibration.fit("prose").error == 0.10
    assert calibration.fit("cjk").error >= 0.35


# --- the layout's margin: no breakpoint under the minimum, no shard over the budget ---


@st.composite
def estimated_corpora(draw: st.DrawFn) -> tuple[list[tuple[int, bool]], float, list[float]]:
    """Documents as (point estimate, is it an estimate), the error bound, and each
    document's true error as a share of that bound (-1 to 1)."""
    docs = draw(st.lists(st.tuples(st.integers(1, 3_000), st.booleans()), min_size=1, max_size=60))
    error = draw(st.floats(0.0, 0.6))
    shares = draw(st.lists(st.floats(-1, 1), min_size=len(docs), max_size=len(docs)))
    return docs, error, shares


@settings(max_examples=300, deadline=None)
@given(
    estimated_corpora(),
    st.sampled_from([512, 1_024, 4_096]),
    st.integers(0, 900),
    st.sampled_from([8_000, 20_000, 1_000_000]),
)
def test_any_error_within_the_bound_keeps_breakpoints_above_the_minimum_and_shards_in_budget(
    corpus: tuple[list[tuple[int, bool]], float, list[float]],
    minimum: int,
    instructions: int,
    budget: int,
) -> None:
    docs, error, shares = corpus
    planned: list[DocInfo] = []
    true: dict[str, int] = {}
    for n, ((point, estimated), share) in enumerate(zip(docs, shares, strict=True)):
        path = f"d{n:03d}.md"
        if estimated:  # planned at the upper end; the count is any whole number in the bound
            upper = int(point * (1 + error) + 1e-9)
            low, high = -(-point * (1 - error) // 1), upper
            true[path] = max(int(low), min(high, round(point * (1 + share * error))))
            planned.append(DocInfo(path, max(point, upper), f"k{n}", NOW - 86_400 * 30))
        else:
            true[path] = point
            planned.append(DocInfo(path, point, f"k{n}", NOW - 86_400 * 30))
    error_used = error if any(estimated for _, estimated in docs) else 0.0
    layout = plan_corpus(
        planned,
        min_cacheable_tokens=minimum,
        instructions_tokens=instructions,
        budget_tokens=budget,
        now=NOW,
        estimate_error=error_used,
    )
    for shard in layout.shards:
        plan = shard.plan
        assert instructions + sum(true[p] for p in plan.order) <= budget
        prefix = instructions
        for block in plan.blocks:
            prefix += sum(true[p] for p in block.paths)
            if block.ttl is not None:  # a breakpoint: cached only above the minimum
                assert prefix >= safe_minimum(minimum)
