"""Holding the cache for the hour with marker blocks: the stable part upgraded by the
second question, a tail read twice held as long as the stable part, a tail the last
question wrote held by a keep-warm request when that pays; and the pure rules behind it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.cache import markers
from corpus_cache.cache.policy import Decision, anchor_ttls, holding_tail_pays
from corpus_cache.engine.answers import Answer
from corpus_cache.engine.core import Engine
from corpus_cache.engine.warm import keep_warm_due, next_ping_at
from corpus_cache.plan.anchors import select_breakpoints
from corpus_cache.plan.layout import Layout, Plan, Shard, plan_shard
from corpus_cache.plan.stability import DocInfo
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on
from support.planning import NOW, SONNET_5_5, corpora, edited

T0 = 1_900_000_000.0


def settled_corpus(root: Path, notes: int = 0) -> Path:
    """The test corpus, with `notes` more documents, untouched for a month: nothing in it
    is recently edited."""
    write_corpus(root)
    for i in range(notes):
        (root / f"notes-{i}.md").write_text(
            "".join(f"Note {i}.{n}: team {i} reviews item {n} every week.\n" for n in range(120))
        )
    for path in root.rglob("*"):
        os.utime(path, (T0 - 30 * 86_400, T0 - 30 * 86_400))
    return root


class Clock:
    def __init__(self, emulator: Control) -> None:
        self.now = T0
        self.emulator = emulator
        emulator.freeze(T0)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.emulator.post("clock", {"set": self.now})

    def until(self, moment: float) -> None:
        self.advance(moment - self.now)


@asynccontextmanager
async def settled_engine(
    tmp_path: Path, running_emulator: Any, emulator: Control, notes: int = 0, **settings: Any
) -> AsyncIterator[tuple[Engine, Clock, Path]]:
    """An engine on a settled corpus, on a clock shared with the emulator."""
    clock = Clock(emulator)
    corpus = settled_corpus(tmp_path / "corpus", notes)
    state = tmp_path / "state"
    async with engine_on(corpus, running_emulator.base_url, state, clock=clock, **settings) as e:
        yield e, clock, corpus


Settled = tuple[Engine, Clock, Path]


@pytest.fixture
async def settled(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> AsyncIterator[Settled]:
    async with settled_engine(tmp_path, running_emulator, emulator) as engine_clock_corpus:
        yield engine_clock_corpus


def edit(corpus: Path, rel: str, sentence: str) -> None:
    path = corpus / rel
    path.write_text(path.read_text() + sentence + "\n")


async def upgraded_then_edited(engine: Engine, clock: Clock, corpus: Path) -> tuple[Answer, Answer]:
    """Two questions (the second upgrades the cached corpus to 1 hour), an edit, and the
    question that writes the edited document again: those two answers."""
    await engine.ask("When are deploys frozen?")
    clock.advance(60)
    # The second question reads the 5-minute entry and upgrades it: a marker at 1 hour.
    upgrade = await engine.ask("When are deploys frozen?")
    edit(corpus, "deploys.md", "Deploys need two approvals.")
    clock.advance(30)
    await engine.refresh()
    clock.advance(30)
    return upgrade, await engine.ask("How many approvals do deploys need?")


# --- in the engine --------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_tail_read_twice_outlives_a_break_without_a_keep_warm_request(
    settled: Settled,
) -> None:
    engine, clock, corpus = settled
    upgrade, wrote_tail = await upgraded_then_edited(engine, clock, corpus)
    clock.advance(60)
    held = await engine.ask("How many approvals do deploys need?")
    clock.advance(40 * 60)  # a break: every 5-minute entry has lapsed
    after_break = await engine.ask("How many approvals do deploys need?")
    kinds = [row.kind for row in engine.ledger.requests(engine.corpus_key)]

    assert upgrade.usage.cache_write_5m_tokens == 0
    assert 0 < upgrade.usage.cache_write_1h_tokens < 10
    tail = wrote_tail.usage.cache_write_5m_tokens
    assert tail > 500
    assert wrote_tail.usage.cache_write_1h_tokens == 0
    # The second read of the edited tail holds it for the hour, for the price of a marker.
    assert held.usage.cache_write_5m_tokens == 0
    assert 0 < held.usage.cache_write_1h_tokens < 10
    assert after_break.usage.cache_write_tokens == 0
    assert after_break.usage.cache_read_tokens == (
        held.usage.cache_read_tokens + held.usage.cache_write_1h_tokens
    )
    assert "keep-warm" not in kinds


@pytest.mark.anyio
async def test_a_tail_the_last_question_wrote_is_held_by_a_keep_warm_request_when_it_pays(
    settled: Settled,
) -> None:
    engine, clock, corpus = settled
    _, wrote_tail = await upgraded_then_edited(engine, clock, corpus)
    due = next_ping_at(engine)
    assert due == pytest.approx(clock.now + 270.0)
    clock.until(due)
    (hold,) = await keep_warm_due(engine)
    clock.advance(40 * 60)
    after_break = await engine.ask("How many approvals do deploys need?")

    prefix = wrote_tail.usage.cache_read_tokens + wrote_tail.usage.cache_write_tokens
    assert hold.usage.cache_read_tokens == prefix
    assert 0 < hold.usage.cache_write_1h_tokens < 10
    assert hold.usage.cache_write_5m_tokens == 0
    assert after_break.usage.cache_write_tokens == 0


@pytest.mark.anyio
async def test_after_a_break_an_edit_to_the_held_tails_end_writes_that_document_only(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    # Enough documents that old copies are a small share of the corpus.
    larger = settled_engine(tmp_path, running_emulator, emulator, notes=16)
    async with larger as (engine, clock, corpus):
        await a_break_after_editing_the_tail(engine, clock, corpus)
        oncall = engine.current.tokens["oncall.md"]
        answer = await engine.ask("How are swaps logged?")
        old_copies = engine.current.shards[0].plan.superseded_tokens
    # oncall.md written again, and not the tail before it: oncall.md's old copy stays.
    assert answer.usage.cache_write_tokens < oncall + 100
    assert old_copies > oncall
    assert "logged in the rota" in answer.text


async def a_break_after_editing_the_tail(engine: Engine, clock: Clock, corpus: Path) -> None:
    await upgraded_then_edited(engine, clock, corpus)  # deploys.md is in the tail
    for rel, sentence in (
        ("incidents.md", "Every SEV-1 gets a written review."),
        ("oncall.md", "The rotation is posted on Mondays."),
        ("oncall.md", "Swaps need a week's notice."),  # oncall.md: the likeliest next edit
    ):
        edit(corpus, rel, sentence)
        await engine.refresh()
        clock.advance(60)
        await engine.ask("When is the rotation posted?")
    tail = engine.current.shards[0].plan.order[-3:]
    assert set(tail) == {"deploys.md", "incidents.md", "oncall.md"}
    assert tail[-1] == "oncall.md"
    clock.advance(60)
    await engine.ask("When is the rotation posted?")  # reads the tail again: holds it
    clock.advance(40 * 60)  # the tail's inner entries have lapsed; the 1-hour ones live
    edit(corpus, "oncall.md", "Swaps are logged in the rota.")
    await engine.refresh()


@pytest.mark.anyio
async def test_with_the_5_minute_ttl_forced_nothing_is_held(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    forced = settled_engine(tmp_path, running_emulator, emulator, ttl="5m")
    async with forced as (engine, clock, _):
        answers = []
        for _ in range(3):
            answers.append(await engine.ask("When are deploys frozen?"))
            clock.advance(60)
    assert all(a.usage.cache_write_1h_tokens == 0 for a in answers)
    assert answers[1].usage.cache_write_tokens == answers[2].usage.cache_write_tokens == 0


# --- the pure rules -------------------------------------------------------------------


def planned(docs: list[DocInfo]) -> Plan:
    return plan_shard(docs, min_cacheable_tokens=512, instructions_tokens=120, now=NOW)


def hot_tail_plan() -> Plan:
    """A plan with a stable part and a tail of two recently edited documents."""
    docs = [DocInfo(f"d{i:02d}.md", 2_000, f"k{i}", NOW - 90 * 86_400.0) for i in range(8)]
    docs = edited(edited(docs, 2, NOW - 600), 5, NOW - 300)
    plan = planned(docs)
    assert plan.stable_anchor is not None
    assert plan.stable_anchor != plan.anchors[-1]
    return plan


def test_the_second_question_upgrades_the_stable_part_and_then_holds_the_tail() -> None:
    plan = hot_tail_plan()
    stable, end = plan.stable_anchor, plan.anchors[-1]
    assert stable is not None
    live_5m = dict.fromkeys(plan.anchors, "5m")
    upgraded = markers.for_question(plan, {}, live_5m, upgrade_stable=True, hold_tail=True)
    assert upgraded == {stable: 1}
    # Once the stable part is a 1-hour entry, a question reading the 5-minute tail holds it.
    live = {**live_5m, stable: "1h"}
    held = markers.for_question(plan, upgraded, live, upgrade_stable=True, hold_tail=True)
    assert held == {stable: 1, end: 1}
    # Nothing more while it lives; nothing past the live prefix once it has lapsed.
    assert markers.for_question(plan, held, {**live, end: "1h"}, upgrade_stable=True,
                                hold_tail=True) == held  # fmt: skip
    lapsed = {a: ttl for a, ttl in live.items() if a <= stable}
    assert markers.for_question(plan, held, lapsed, upgrade_stable=True, hold_tail=True) == {
        stable: 1
    }
    assert markers.for_question(plan, held, {}, upgrade_stable=True, hold_tail=True) == {}


def test_no_marker_without_the_policy_wanting_the_hour() -> None:
    plan = hot_tail_plan()
    live = dict.fromkeys(plan.anchors, "5m")
    assert markers.for_question(plan, {}, live, upgrade_stable=False, hold_tail=False) == {}


@given(corpora(), st.data())
def test_a_marker_changes_the_identity_of_every_anchor_from_it_on_and_no_other(
    docs: list[DocInfo], data: st.DataObject
) -> None:
    plan = planned(docs)
    if not plan.anchors:
        return
    layout = Layout((Shard(0, plan, plan.total_tokens),), 1_000_000, ())
    position = data.draw(st.sampled_from(plan.anchors))
    before = markers.anchor_ids(layout, "m")[0]
    after = markers.anchor_ids(layout, "m", {0: {position: 1}})[0]
    for anchor in plan.anchors:
        assert (before[anchor] == after[anchor]) == (anchor < position)


@given(corpora(), st.data())
def test_markers_are_carried_only_where_the_prefix_through_them_is_unchanged(
    docs: list[DocInfo], data: st.DataObject
) -> None:
    old = planned(docs)
    index = data.draw(st.integers(0, len(docs) - 1))
    new = plan_shard(
        edited(docs, index, NOW + 60), min_cacheable_tokens=512, instructions_tokens=120,
        now=NOW + 60, previous=old, live=old.anchors,
    )  # fmt: skip
    carried = markers.carried(old, new, dict.fromkeys(old.anchors, 1))
    for position in carried:
        assert position in new.anchors
        assert (
            list(zip(old.order, old.keys, strict=True))[: position + 1]
            == list(zip(new.order, new.keys, strict=True))[: position + 1]
        )


DECISIONS = st.builds(
    Decision,
    stable_ttl=st.sampled_from(["5m", "1h"]),
    tail_ttl=st.sampled_from(["5m", "1h"]),
    ping_every=st.none(),
    max_pings=st.just(0),
    expected_cost=st.just(0.0),
    name=st.just("x"),
    reason=st.just("x"),
    upgrade=st.booleans(),
).filter(lambda d: d.upgrade or not (d.stable_ttl == "5m" and d.tail_ttl == "1h"))


@given(
    st.lists(st.integers(0, 200), min_size=1, max_size=6, unique=True).map(sorted),
    st.integers(0, 200),
    DECISIONS,
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 200)),
)
def test_one_hour_breakpoints_always_come_before_five_minute_ones(
    anchors: list[int], tail_start: int, decision: Decision, held: bool, through: int | None
) -> None:
    ttls = anchor_ttls(
        anchors, tail_start=tail_start, decision=decision, stable_held=held, held_through=through
    )
    sequence = [ttls[a] for a in anchors]
    assert sequence == sorted(sequence, key=lambda ttl: ttl == "5m")
    if through is not None:
        assert all(ttls[a] == "1h" for a in anchors if a <= through)


def test_holding_a_tail_pays_when_it_is_large_against_the_read_of_the_prefix() -> None:
    gaps = [60.0] * 10 + [1_800.0] * 2  # working sessions, breaks of half an hour
    common = {"prices": SONNET_5_5, "edits_per_question": 0.25, "pings": 1}
    # Writing 6,000 tokens again costs 1.25 x 6,000 x (3/4 not edited meanwhile) = 5,625;
    # holding them costs a read of 78,000 at 0.05 = 3,900.
    assert holding_tail_pays(gaps, stable=72_000, tail=6_000, **common)  # type: ignore[arg-type]
    # 2,000 tokens: 1,875 saved, against the same 3,900.
    assert not holding_tail_pays(gaps, stable=76_000, tail=2_000, **common)  # type: ignore[arg-type]
    # Nobody comes back within the hour: nothing to hold it for.
    never = [60.0] * 10 + [20_000.0] * 4
    assert not holding_tail_pays(never, stable=72_000, tail=6_000, prices=SONNET_5_5,
                                 edits_per_question=0.25, pings=0)  # fmt: skip


def test_the_anchor_a_marker_was_just_added_after_is_always_marked() -> None:
    # The tail's four anchors are all dead (an edit): without `must`, the three slots go
    # to the end and the two anchors before it.
    anchors, alive = (4, 9, 10, 11, 12, 13), {4}
    assert select_breakpoints(anchors, alive, slots=3, turn=0) == [11, 12, 13]
    assert 9 in select_breakpoints(anchors, alive, slots=3, turn=0, must=9)


def test_the_lookback_counts_marker_blocks_as_positions() -> None:
    # The anchor after the live one is 19 documents on: in the lookback's reach...
    anchors = (0, 19, 20)
    assert select_breakpoints(anchors, {0}, slots=2, turn=0) == [19, 20]
    # ...unless a marker block after its document pushes its breakpoint one further: then
    # the live anchor itself is marked, so that the request still reads it.
    assert select_breakpoints(anchors, {0}, slots=2, turn=0, markers={19: 1}) == [0, 20]
    # A marker after the live anchor's own document is part of its entry: no further.
    assert select_breakpoints(anchors, {0}, slots=2, turn=0, markers={0: 1}) == [19, 20]
