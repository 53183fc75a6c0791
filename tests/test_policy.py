"""The TTL and keep-warm policy: hand-worked cases and properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.cache.policy import (
    Prices,
    considered_gaps,
    decide,
    expected_cost,
    expected_cost_with_upgrade,
)
from corpus_cache.engine.warm import next_ping_at
from corpus_cache.mcp_surface.results import render_status, status
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on
from support.planning import SONNET_5_5

SONNET_4_6 = Prices(read=0.1, write_5m=1.25, write_1h=2.0)


def test_questions_a_minute_apart_keep_5_minute_entries_and_send_nothing_between_them() -> None:
    decision = decide([60.0] * 20, stable_tokens=50_000, tail_tokens=5_000, prices=SONNET_4_6)
    assert decision.stable_ttl == "5m"
    # Nothing is sent while questions come: the upgrade waits for 4.5 quiet minutes.
    assert decision.upgrade
    assert decision.ping_every == 3_570.0
    assert "1.0 minutes apart (last 20 gaps)" in decision.reason


def test_gaps_longer_than_5_minutes_upgrade_instead_of_writing_1_hour_entries() -> None:
    for gaps in ([420.0] * 3, [420.0] * 20, [600.0, 1_800.0, 3_000.0, 1_200.0, 2_400.0] * 4):
        decision = decide(gaps, stable_tokens=60_000, tail_tokens=2_000, prices=SONNET_5_5)
        assert decision.upgrade, gaps
        one_hour = expected_cost(
            considered_gaps(gaps), stable=60_000, tail=2_000, prices=SONNET_5_5,
            stable_ttl="1h", tail_ttl="1h", pings=0,
        )  # fmt: skip
        assert decision.expected_cost < one_hour
        assert "turned into 1-hour ones" in decision.reason


def test_the_upgrade_costs_a_read_and_the_tail_at_the_1_hour_price() -> None:
    # One gap of 10 minutes: the upgrade 4.5 minutes in (a read of the prefix, the tail
    # written again after the marker at 2x), then the question reads.
    cost = expected_cost_with_upgrade(
        [600.0], stable=10_000, tail=1_000, prices=SONNET_5_5, pings=0
    )
    assert cost == pytest.approx(0.05 * 11_000 + 2.0 * 1_000 + 0.05 * 11_000)
    # A gap of 2 hours without pings: upgraded, then lapsed: written again at 5 minutes.
    lapsed = expected_cost_with_upgrade(
        [7_200.0], stable=10_000, tail=1_000, prices=SONNET_5_5, pings=0
    )
    assert lapsed == pytest.approx(0.05 * 11_000 + 2.0 * 1_000 + 1.25 * 11_000)
    # One hourly ping bridges it.
    bridged = expected_cost_with_upgrade(
        [7_200.0], stable=10_000, tail=1_000, prices=SONNET_5_5, pings=1
    )
    assert bridged == pytest.approx(0.05 * 11_000 + 2.0 * 1_000 + 2 * 0.05 * 11_000)


def test_the_second_question_within_5_minutes_makes_the_upgrade() -> None:
    # A gap of a minute, then one of 10: the second question reads the 5-minute entry and
    # upgrades it (the tail after the marker written again, at 1.25x, costing less than a
    # read of the prefix); the third question reads the 1-hour entry. No keep-warm request.
    cost = expected_cost_with_upgrade(
        [60.0, 600.0], stable=40_000, tail=1_000, prices=SONNET_5_5, pings=0
    )
    read = 0.05 * 41_000
    assert cost == pytest.approx((read + 1.25 * 1_000 + read) / 2)
    # A tail larger than a read of the prefix is left to the keep-warm upgrade.
    large = expected_cost_with_upgrade(
        [60.0, 600.0], stable=10_000, tail=5_000, prices=SONNET_5_5, pings=0
    )
    assert large == pytest.approx((0.05 * 15_000 + 0.05 * 15_000 + 2.0 * 5_000 + 0.05 * 15_000) / 2)


def test_a_5_minute_tail_behind_a_1_hour_stable_part_lapses_only_if_just_written() -> None:
    # One break of 50 minutes; an edit before every fourth question. The tail is held by
    # the second question that reads it, so it is lost in the break only when the last
    # question wrote it: with a chance of 1 in 4.
    cost = expected_cost(
        [3_000.0], stable=40_000, tail=2_000, prices=SONNET_5_5, stable_ttl="1h",
        tail_ttl="5m", pings=0, edits_per_question=0.25,
    )  # fmt: skip
    gap = 0.05 * 40_000 + 2_000 * (0.25 * 1.25 + 0.75 * 0.05)
    edits = 0.25 * 2_000 * 1.25
    extra_1h = (2.0 - 1.25) * 40_000
    assert cost == pytest.approx(gap + edits + extra_1h)


def test_the_reason_says_who_makes_the_upgrade() -> None:
    small = decide([60.0] * 20, stable_tokens=50_000, tail_tokens=0, prices=SONNET_5_5)
    assert "by the next question within 5 minutes" in small.reason
    # A tail of 5,000 would be written again after the marker (6,250 at 1.25x), more than
    # a read of the prefix (2,750): left to the keep-warm request.
    large = decide([60.0] * 20, stable_tokens=50_000, tail_tokens=5_000, prices=SONNET_5_5)
    assert large.upgrade
    assert "next question" not in large.reason
    assert "one keep-warm request" in large.reason


def test_frequent_edits_of_a_large_tail_keep_it_at_5_minutes() -> None:
    # Questions every 3 minutes, an edit before almost every one: the tail is rewritten
    # anyway, and 1.25x per rewrite beats 2x.
    decision = decide(
        [180.0] * 20, stable_tokens=60_000, tail_tokens=20_000, prices=SONNET_5_5,
        edits_per_question=0.9,
    )  # fmt: skip
    assert decision.tail_ttl == "5m"


def test_a_forced_ttl_is_respected() -> None:
    decision = decide(
        [60.0] * 5, stable_tokens=1_000, tail_tokens=0, prices=SONNET_4_6, forced="1h"
    )
    assert decision.stable_ttl == "1h"


def test_with_no_gaps_seen_a_working_session_is_assumed() -> None:
    decision = decide([], stable_tokens=1_000, tail_tokens=0, prices=SONNET_4_6)
    assert decision.stable_ttl == "5m"
    assert "no gaps observed yet" in decision.reason


def test_before_any_break_is_seen_a_break_is_still_insured_against() -> None:
    # Only short gaps so far: an upgrade 4.5 minutes into the next silence, and an hourly
    # ping, cost a few reads; finding the cache gone after a lunch break costs a rewrite.
    decision = decide([60.0, 80.0], stable_tokens=70_000, tail_tokens=0, prices=SONNET_5_5)
    assert decision.upgrade
    assert decision.max_pings >= 1


gaps = st.lists(st.floats(1, 20_000), min_size=1, max_size=30)
prices = st.sampled_from([SONNET_4_6, SONNET_5_5, Prices(0.025, 1.25, 2.0)])


@given(gaps, st.integers(1, 100_000), st.integers(0, 20_000), prices)
def test_the_decision_is_never_worse_than_a_fixed_strategy(
    observed: list[float], stable: int, tail: int, price: Prices
) -> None:
    decision = decide(observed, stable_tokens=stable, tail_tokens=tail, prices=price)
    weighed = considered_gaps(observed)
    fixed = [
        expected_cost(weighed, stable=stable, tail=tail, prices=price, stable_ttl=ttl, pings=pings)
        for ttl in ("5m", "1h")
        for pings in (0, 24)  # let it lapse, or keep it warm throughout
    ]
    assert decision.expected_cost <= min(fixed) + 1e-9


@given(gaps, st.integers(1, 100_000), prices)
def test_one_hour_entries_always_precede_five_minute_ones(
    observed: list[float], stable: int, price: Prices
) -> None:
    decision = decide(observed, stable_tokens=stable, tail_tokens=100, prices=price)
    # An upgrading decision writes the tail with 1 hour only once the stable part has
    # been upgraded, so that every breakpoint of such a request is 1-hour.
    assert decision.upgrade or not (decision.stable_ttl == "5m" and decision.tail_ttl == "1h")


# --- in the engine --------------------------------------------------------------------


@pytest.mark.anyio
async def test_cache_status_explains_the_policy_and_it_follows_the_gaps(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    clock = [1_900_000_000.0]
    emulator.freeze(clock[0])
    corpus = write_corpus(tmp_path / "corpus")
    base = running_emulator.base_url
    async with engine_on(corpus, base, tmp_path / "state", clock=lambda: clock[0]) as engine:
        first = status(engine).cache_policy[0]
        assert first.decision.startswith("5m>1h")
        assert "no gaps observed yet" in first.reason
        assert "Cache policy: 5-minute cache entries" in render_status(status(engine))
        for _ in range(6):  # a question every 20 minutes
            await engine.ask("When are deploys frozen?")
            clock[0] += 1_200
            emulator.advance(1_200)
        later = status(engine).cache_policy[0]
    assert "turned into 1-hour ones" in later.reason
    assert "20.0 minutes apart" in later.reason


@pytest.mark.anyio
async def test_a_restart_remembers_how_questions_arrive(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    clock = [1_900_000_000.0]
    emulator.freeze(clock[0])
    corpus = write_corpus(tmp_path / "corpus")
    base, state = running_emulator.base_url, tmp_path / "state"
    async with engine_on(corpus, base, state, clock=lambda: clock[0]) as first:
        for _ in range(4):
            await first.ask("When are deploys frozen?")
            clock[0] += 1_500
            emulator.advance(1_500)
    async with engine_on(corpus, base, state, clock=lambda: clock[0]) as again:
        decision = again.ttl_decision(again.current.shards[0])
    assert "25.0 minutes apart" in decision.reason


@pytest.mark.anyio
async def test_prewarm_writes_the_cache_after_a_change_and_says_what_it_cost(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    from corpus_cache.engine.warm import prewarm_after_changes

    corpus = write_corpus(tmp_path / "corpus")
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", prewarm=True
    ) as engine:
        prewarm_after_changes(engine)
        await engine.refresh()  # nothing changed: nothing to warm
        assert engine.last_prewarm is None
        path = corpus / "deploys.md"
        path.write_text(path.read_text() + "Deploys need two approvals.\n")
        await engine.refresh()
        assert engine.last_prewarm is not None
        assert engine.last_prewarm.cost_usd > 0
        kinds = [row.kind for row in engine.ledger.requests(engine.corpus_key)]
        assert kinds == ["warm"]
        assert "pre-warmed at" in render_status(status(engine))
        answer = await engine.ask("How many approvals do deploys need?")
    # The question found the cache written; it writes at most the marker holding it for
    # an hour (markers.py).
    assert answer.usage.cache_read_tokens > 0
    assert answer.usage.cache_write_5m_tokens == 0
    assert answer.usage.cache_write_1h_tokens < 10


@pytest.mark.anyio
async def test_a_quiet_cache_is_upgraded_to_1_hour_for_the_price_of_a_marker(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    from corpus_cache.api.request import MARKER
    from corpus_cache.engine.warm import keep_warm_due

    clock = [1_900_000_000.0]
    emulator.freeze(clock[0])
    corpus = write_corpus(tmp_path / "corpus")
    base = running_emulator.base_url
    async with engine_on(corpus, base, tmp_path / "state", clock=lambda: clock[0]) as engine:
        first = await engine.ask("When are deploys frozen?")
        due = next_ping_at(engine)
        assert due == pytest.approx(clock[0] + 270.0)
        clock[0] = due
        emulator.post("clock", {"set": due})
        (upgrade,) = await keep_warm_due(engine)
        # 50 minutes later, long after a 5-minute entry would have gone.
        clock[0] += 3_000
        emulator.advance(3_000)
        later = await engine.ask("When are deploys frozen?")

    written = first.usage.cache_write_5m_tokens
    assert upgrade.usage.cache_read_tokens == written
    assert 0 < upgrade.usage.cache_write_1h_tokens < 10  # the marker only: no tail yet
    assert later.usage.cache_read_tokens == written + upgrade.usage.cache_write_1h_tokens
    assert later.usage.cache_write_tokens == 0
    calls = [e for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"]
    body = sorted(calls, key=lambda e: e["time"])[1]["body"]
    content = body["messages"][0]["content"]
    markers = [b for b in content if b.get("text") == MARKER]
    assert len(markers) == 1
    assert markers[0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert body["max_tokens"] == 0
