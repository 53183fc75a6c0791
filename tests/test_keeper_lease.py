"""The keeper's lease: its rules (pure, property-tested), its SQLite edge (real files,
several connections and threads racing for it), and engines sharing a state folder in this
process (only the keeper pre-warms; a stalled keeper sends nothing once replaced).
Real servers in their own processes: tests/test_keeper_windows.py."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.accounting.lease import (
    BEAT_SECONDS,
    INSTANCE_SECONDS,
    LEASE_SECONDS,
    Instance,
    Lease,
    LeaseStore,
    next_lease,
    still_expired,
)
from corpus_cache.accounting.ledger import Ledger
from corpus_cache.emulator import RunningEmulator
from corpus_cache.engine.keeper import Keeper, elected
from corpus_cache.engine.runtime import keeping_the_cache
from corpus_cache.engine.warm import prewarm_after_changes
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on

KEEPER = Instance("keeper", 100, 0.0)
OTHERS = [Instance(f"other-{n}", 200 + n, 0.0) for n in range(3)]


class Beats:
    """Instances beating by the pure rules, as the store applies them."""

    def __init__(self, lease: Lease | None = None) -> None:
        self.lease = lease
        self.seen: dict[str, Lease | None] = {}

    def beat(self, who: Instance, now: float) -> None:
        self.lease = next_lease(self.lease, who, now, self.seen.get(who.id))
        self.seen[who.id] = still_expired(self.lease, who, now)


beat_gaps = st.floats(min_value=0.01, max_value=BEAT_SECONDS)


@given(
    keeper_gaps=st.lists(
        st.floats(min_value=0.01, max_value=LEASE_SECONDS - 0.01), min_size=1, max_size=30
    ),
    other_beats=st.lists(
        st.tuples(st.integers(0, 2), st.floats(min_value=0, max_value=80)), max_size=60
    ),
)
def test_a_keeper_that_renews_within_its_lease_is_never_replaced(
    keeper_gaps: list[float], other_beats: list[tuple[int, float]]
) -> None:
    beats = Beats()
    beats.beat(KEEPER, 0.0)
    times, now = [], 0.0
    for gap in keeper_gaps:
        now += gap
        times.append(now)
    events = [(t, KEEPER) for t in times] + [
        (t, OTHERS[n]) for n, t in other_beats if t <= times[-1]
    ]
    for at, who in sorted(events, key=lambda e: (e[0], e[1].id)):
        beats.beat(who, at)
        assert beats.lease is not None
        assert beats.lease.holder == KEEPER.id
        assert beats.lease.since == 0.0  # renewed, never taken again


@given(
    last_beat=st.floats(min_value=0, max_value=1000),
    schedules=st.lists(
        st.tuples(st.floats(min_value=0, max_value=BEAT_SECONDS), st.lists(beat_gaps, min_size=1)),
        min_size=1,
        max_size=3,
    ),
)
def test_a_keeper_that_stops_renewing_is_replaced_within_five_seconds(
    last_beat: float, schedules: list[tuple[float, list[float]]]
) -> None:
    """Each other instance beats at least every BEAT_SECONDS (its gaps repeated)."""
    beats = Beats()
    beats.beat(KEEPER, last_beat)
    events = []
    for n, (start, gaps) in enumerate(schedules):
        at, i = last_beat + start, 0
        while at <= last_beat + 6:
            events.append((at, OTHERS[n]))
            at += gaps[i % len(gaps)]
            i += 1
    taken = None
    for at, who in sorted(events, key=lambda e: (e[0], e[1].id)):
        beats.beat(who, at)
        assert beats.lease is not None
        if beats.lease.holder != KEEPER.id and taken is None:
            taken = at
    assert taken is not None
    assert taken >= last_beat + LEASE_SECONDS  # never while the lease runs
    assert taken is not None
    assert taken - last_beat <= LEASE_SECONDS + 2 * BEAT_SECONDS
    assert LEASE_SECONDS + 2 * BEAT_SECONDS < 5.0


@given(jump=st.floats(min_value=LEASE_SECONDS, max_value=7200), others=st.integers(1, 3))
def test_a_clock_that_jumps_past_the_lease_does_not_hand_it_over(jump: float, others: int) -> None:
    """A test's virtual clock moves in jumps: every instance then sees the lease expired at
    its next beat; a single sighting is not enough, and the keeper renews at its own."""
    beats = Beats()
    beats.beat(KEEPER, 0.0)
    for n in range(others):
        beats.beat(OTHERS[n], 0.5)
    for n in range(others):
        beats.beat(OTHERS[n], jump)  # before the keeper's beat at the new time
    beats.beat(KEEPER, jump)
    for n in range(others):
        beats.beat(OTHERS[n], jump + BEAT_SECONDS)
    assert beats.lease is not None
    assert beats.lease.holder == KEEPER.id


@given(at=st.floats(min_value=0, max_value=1e6), who=st.integers(0, 2))
def test_a_lease_nobody_holds_is_taken_at_the_first_beat(at: float, who: int) -> None:
    lease = next_lease(None, OTHERS[who], at, None)
    assert lease == Lease(OTHERS[who].id, OTHERS[who].pid, at, at + LEASE_SECONDS)


# --- the SQLite edge -------------------------------------------------------------------


def store(path: Path, name: str, corpus: str = "/corpus") -> LeaseStore:
    return LeaseStore(path, corpus, Instance(name, hash(name) % 30000, 0.0))


def test_the_ledgers_migration_makes_the_tables_the_lease_lives_in(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    one = store(path, "a")
    standing = one.beat(10.0, None)
    assert standing.keeper
    assert standing.instances == 1
    assert standing.lease == Lease("a", one.me.pid, 10.0, 10.0 + LEASE_SECONDS)
    one.close()


def test_of_instances_racing_for_a_free_lease_exactly_one_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    for round_ in range(15):
        stores = [store(path, f"r{round_}-{n}", corpus=f"/c{round_}") for n in range(6)]
        start = threading.Barrier(len(stores))
        won: list[bool] = []

        def race(s: LeaseStore, start: threading.Barrier, won: list[bool]) -> None:
            start.wait()
            won.append(s.beat(100.0, None).keeper)

        threads = [threading.Thread(target=race, args=(s, start, won)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(won) == [False] * 5 + [True]
        for s in stores:
            s.close()


def test_a_released_lease_is_taken_at_the_next_beat_and_a_gone_instance_is_not_counted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    a, b, c = store(path, "a"), store(path, "b"), store(path, "c")
    assert a.beat(0.0, None).keeper
    assert not b.beat(0.1, None).keeper
    assert c.beat(0.2, None).instances == 3
    a.release()
    standing = b.beat(1.0, None)
    assert standing.keeper
    assert standing.lease is not None
    assert standing.lease.since == 1.0
    assert standing.instances == 2  # a released its place
    # c stops beating (killed): it is not counted once it has missed beats for longer
    # than INSTANCE_SECONDS before b's previous beat.
    assert b.beat(2.0, None).instances == 2
    assert b.beat(2.0 + INSTANCE_SECONDS, None).instances == 2
    assert b.beat(3.0 + INSTANCE_SECONDS, None).instances == 1
    for s in (a, b, c):
        s.close()


def test_after_a_clock_jump_the_first_to_beat_still_counts_the_others(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    stores = [store(path, name) for name in "abcd"]
    for s in stores:
        s.beat(0.0, None)
    assert stores[2].beat(400.0, None).instances == 4
    for s in stores:
        s.close()


def test_instances_serving_another_corpus_neither_count_nor_compete(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    here, there = store(path, "here", "/one"), store(path, "there", "/two")
    assert here.beat(0.0, None).keeper
    standing = there.beat(0.0, None)
    assert standing.keeper
    assert standing.instances == 1
    here.close()
    there.close()


# --- engines sharing a state folder (in this process, on the emulator) -------------------


def keeper_on(path: Path, now: list[float]) -> Keeper:
    return Keeper(path, "/corpus", lambda: now[0])


def test_a_stalled_keeper_that_was_replaced_learns_it_before_sending_anything(
    tmp_path: Path,
) -> None:
    now = [100.0]
    path = tmp_path / "ledger.sqlite3"
    stalled, other = keeper_on(path, now), keeper_on(path, now)
    assert stalled.beat()
    assert not other.beat()
    for _ in range(4):  # the keeper stalls; the other beats on
        now[0] += BEAT_SECONDS
        other.beat()
    assert other.is_keeper
    assert stalled.is_keeper  # as far as it knows, until it beats again
    assert not stalled.confirm()  # the check before each background request
    assert not stalled.is_keeper
    stalled.release()  # holds nothing: the successor keeps the lease
    now[0] += BEAT_SECONDS
    assert other.beat()
    other.release()


@pytest.mark.anyio
async def test_a_keeper_that_exits_cleanly_is_replaced_at_the_next_beat(tmp_path: Path) -> None:
    now = [100.0]
    path = tmp_path / "ledger.sqlite3"
    async with elected(path, "/corpus", lambda: now[0]) as first:
        assert first.is_keeper
        second = keeper_on(path, now)
        assert not second.beat()
    assert second.beat()  # at the same instant: the lease was given up, not left to expire
    second.release()


@pytest.mark.anyio
async def test_a_server_whose_ledger_cannot_be_opened_keeps_its_own_cache(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"not a database" * 100)
    async with elected(path, "/corpus", lambda: 0.0) as keeper:
        assert keeper is None  # and the engine, with no keeper, sends its background requests


def test_a_beat_that_cannot_write_leaves_a_lone_keeper_keeping_and_a_shared_one_not(
    tmp_path: Path,
) -> None:
    now = [100.0]
    path = tmp_path / "ledger.sqlite3"
    alone = Keeper(path, "/one", lambda: now[0], busy_timeout=0.05)
    shared = Keeper(path, "/two", lambda: now[0], busy_timeout=0.05)
    other = Keeper(path, "/two", lambda: now[0], busy_timeout=0.05)
    assert alone.beat()
    assert shared.beat()
    assert not other.beat()
    now[0] += BEAT_SECONDS
    assert shared.beat()  # it has seen the other now
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    now[0] += BEAT_SECONDS
    assert alone.beat()
    assert not shared.beat()  # it cannot tell whether the other took the lease meanwhile
    locker.execute("ROLLBACK")
    locker.close()
    assert shared.beat()
    for keeper in (alone, shared, other):
        keeper.release()


@pytest.mark.anyio
async def test_of_two_engines_on_one_state_folder_only_the_keeper_prewarms_after_a_change(
    tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    async with (
        engine_on(corpus, running_emulator.base_url, state, prewarm=True, watch=False) as one,
        engine_on(corpus, running_emulator.base_url, state, prewarm=True, watch=False) as two,
        keeping_the_cache(one) as keeps_one,
        keeping_the_cache(two) as keeps_two,
    ):
        assert keeps_one is not None
        assert keeps_two is not None
        assert keeps_one.is_keeper
        assert not keeps_two.is_keeper
        for engine in (one, two):
            prewarm_after_changes(engine)  # as `serve` does
        (corpus / "deploys.md").write_text("# deploys.md\n\nDeploys are never frozen now.\n")
        await two.refresh()  # the one that does not keep the cache sees the change first
        await one.refresh()
        warms = [r for r in one.ledger.history(one.corpus_key) if r.kind == "warm"]
        assert len(warms) == 1
        assert one.last_prewarm is not None
        assert two.last_prewarm is None
