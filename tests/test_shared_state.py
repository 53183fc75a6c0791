"""What instances sharing a state folder tell each other through the ledger's SQLite
(accounting/shared.py): real ledger files, real processes."""

from __future__ import annotations

import contextvars
import itertools
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.accounting.shared import Shared, SharedSpend
from corpus_cache.api.ratelimits import Bucket, RateLimits
from corpus_cache.api.spending import DailyCap
from corpus_cache.cache.history import History
from corpus_cache.cache.policy import RECENT_GAPS
from corpus_cache.config import Settings
from corpus_cache.engine.runtime import keeping_warm
from corpus_cache.engine.warm import warm_shard
from corpus_cache.errors import BudgetExceededError
from support.corpus_fixture import write_corpus
from support.emulator_control import FROZEN_AT, Control, EmulatorTime
from support.engines import engine_on

BACKEND = "anthropic http://127.0.0.1:1 None"


@contextmanager
def instance(state: Path) -> Iterator[Shared]:
    """One instance's view of the state folder: a ledger of its own on the shared file."""
    ledger = Ledger(state / "ledger.sqlite3")
    try:
        yield Shared(ledger)
    finally:
        ledger.close()


def test_a_cold_prefix_claimed_by_a_process_that_was_killed_blocks_no_one(tmp_path: Path) -> None:
    child = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from corpus_cache.accounting.ledger import Ledger
        from corpus_cache.accounting.shared import Shared
        shared = Shared(Ledger(Path({str(tmp_path / "ledger.sqlite3")!r})))
        assert shared.claim({BACKEND!r}, {{"prefix"}}, now=0.0, hold=120.0)
        os.kill(os.getpid(), signal.SIGKILL)  # a writer killed before its response began
        """
    )
    killed = subprocess.run([sys.executable, "-c", child], check=False, timeout=60)
    assert killed.returncode == -9
    with instance(tmp_path) as shared:
        assert not shared.held_by_others(BACKEND, {"prefix"}, now=1.0)
        assert shared.claim(BACKEND, {"prefix"}, now=1.0, hold=120.0)


def test_a_cold_prefix_claimed_by_a_live_instance_waits_until_it_is_released(
    tmp_path: Path,
) -> None:
    with instance(tmp_path) as first, instance(tmp_path) as second:
        assert first.claim(BACKEND, {"a", "b"}, now=0.0, hold=120.0)
        assert not second.claim(BACKEND, {"b", "c"}, now=1.0, hold=120.0)
        assert second.held_by_others(BACKEND, {"b"}, now=1.0)
        assert not second.held_by_others(BACKEND, {"b"}, now=121.0)  # it lapses
        first.release_claims(BACKEND, {"a", "b"})
        assert second.claim(BACKEND, {"b", "c"}, now=2.0, hold=120.0)


def test_two_instances_cannot_both_pass_a_daily_cap_only_one_fits(tmp_path: Path) -> None:
    settings = Settings(corpus=tmp_path, state_dir=tmp_path, max_usd_per_day=1.5)

    def cap(shared: Shared) -> DailyCap:
        return DailyCap(
            settings, lambda since: 0.0, lambda: 1_000.0,
            SharedSpend(shared, "/corpus", lambda: "anthropic"),
        )  # fmt: skip

    def refusal(cap: DailyCap) -> str | None:
        """Why `cap` refuses a $1 question, checked as another process would: in a
        context of its own (within one, a check inside another is counted already)."""

        def attempt() -> str | None:
            try:
                with cap.within(1.0):
                    return None
            except BudgetExceededError as refused:
                return str(refused)

        return contextvars.Context().run(attempt)

    with instance(tmp_path) as first, instance(tmp_path) as second:
        with cap(first).within(1.0):
            assert "$1.0000 for requests under way" in (refusal(cap(second)) or "")
        assert refusal(cap(second)) is None  # released once the first's request was recorded


@given(
    st.lists(st.floats(0, 1e6), max_size=80),
    st.lists(st.floats(0, 1e6), max_size=80),
)
def test_questions_of_another_instance_count_in_time_order_with_this_ones(
    mine: list[float], theirs: list[float]
) -> None:
    history = History()
    for at in sorted(mine):
        history.asked(0, at)
    for at in sorted(theirs):
        history.asked_elsewhere(0, at)
    everything = sorted(mine + theirs)[-(RECENT_GAPS + 1) :]
    assert history.gaps(0) == [b - a for a, b in itertools.pairwise(everything)]


@given(
    st.dictionaries(
        st.sampled_from(["requests", "input_tokens", "output_tokens"]),
        st.tuples(st.integers(1, 10**7), st.floats(-1e7, 1e7), st.floats(0, 2e9)),
    )
)
def test_buckets_one_instance_writes_are_the_ones_another_reads(
    figures: dict[str, tuple[int, float, float]],
) -> None:
    limits = RateLimits(
        {k: Bucket(*v) for k, v in figures.items()},  # type: ignore[misc]
        "the API's rate-limit headers",
    )
    assert RateLimits.from_json(limits.to_json()) == limits
    assert RateLimits.from_json("{not json") is None


@pytest.mark.anyio
async def test_a_prefix_another_instance_made_a_one_hour_entry_is_read_here_after_five_minutes(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    # The keeper's keep-warm upgrade adds a marker block; a question in the other instance
    # must send it too, or its prefix is not the one the 1-hour entry holds.
    corpus = write_corpus(tmp_path / "corpus", filler_sentences=90)
    emulator.freeze(at=FROZEN_AT)
    time = EmulatorTime(emulator)
    url, state = running_emulator.base_url, tmp_path / "shared-state"
    timed = {"clock": time.clock, "sleep": time.sleep}
    async with (
        engine_on(corpus, url, state, **timed) as keeper,
        engine_on(corpus, url, state, **timed) as other,
    ):
        await keeper.ask("Which port does the routing engine Kestrel listen on?")
        (shard,) = keeper.current.shards
        upgraded = keeper.upgraded(keeper.current, shard)
        await warm_shard(keeper, upgraded, shard, "keep-warm", upgrade=True)
        await time.sleep(400)  # the 5-minute entries have lapsed; the 1-hour one has not
        answer = await other.ask("When are deploys frozen?")
    assert answer.usage.cache_read_tokens > 4_000
    assert answer.usage.cache_write_5m_tokens + answer.usage.cache_write_1h_tokens < 50


def _poison(state: Path, corpus: str, backend: str, model: str, what: str) -> None:
    """One row another instance (another version, a corrupt or hostile write) shared."""
    db = sqlite3.connect(state / "ledger.sqlite3")
    rows = {
        "markers": (
            "INSERT INTO shared_markers (corpus, shard, plan, markers, instance) "
            "VALUES (?, 0, 'p', 'not json', 'other')",
            (corpus,),
        ),
        "question": (
            "INSERT INTO shared_questions (corpus, shard, at, instance) "
            "VALUES (?, 0, 'soon', 'other')",
            (corpus,),
        ),
        "entry": (
            "INSERT INTO shared_entries (backend, corpus, identity, expiry, ttl, instance) "
            "VALUES (?, ?, 'x', 1e999, '7d', 'other')",
            (backend, corpus),
        ),
        "limits": (
            "INSERT OR REPLACE INTO shared_limits (backend, model, pool, buckets, seen, "
            "instance) VALUES (?, ?, 'messages', "
            '\'{"source": "x", "buckets": {"input_tokens": [1e999, 0, 0]}}\', 1e300, \'other\')',
            (backend, model),
        ),
    }
    db.execute(*rows[what])
    db.commit()
    db.close()


@pytest.mark.anyio
@pytest.mark.parametrize("what", ["markers", "question", "entry", "limits"])
async def test_a_row_another_instance_shared_that_cannot_be_read_is_skipped(
    running_emulator: Any, emulator: Control, tmp_path: Path, what: str
) -> None:
    from corpus_cache.engine.core import _backend_key

    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "shared-state"
    async with engine_on(corpus, running_emulator.base_url, state) as engine:
        _poison(state, engine.corpus_key, _backend_key(engine.backend), engine.model.id, what)
        answer = await engine.ask("Which port does the routing engine Kestrel listen on?")
        with anyio.fail_after(5):
            async with keeping_warm(engine, check_every=0.05):
                await anyio.sleep(0.3)  # its loop reads the shared rows again
    assert answer.citations


@pytest.mark.anyio
async def test_an_answer_given_up_but_still_read_counts_against_every_instances_cap(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    # The question's own check ends when it gives up waiting; its response is still read,
    # and billed, to the end, so the cap must go on counting it, in every instance.
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "shared-state"
    async with engine_on(corpus, running_emulator.base_url, state, max_usd_per_day=1.0) as engine:
        emulator.fault(kind="delay", delay=1.0)
        with anyio.move_on_after(0.2):
            await engine.ask("Which port does the routing engine Kestrel listen on?")
        assert engine.read_for_no_one == 1
        with instance(state) as other:
            now = engine.clock()
            refused = other.reserve(
                engine.corpus_key, engine.answering, 0.99, cap=1.0, since=0, now=now, hold=60
            )
            assert refused is not None
            assert refused.key is None  # what the given-up answer may cost is counted
            with anyio.fail_after(10):
                while engine.read_for_no_one:  # noqa: ASYNC110 (read in the background)
                    await anyio.sleep(0.02)
            spent = engine.totals().cost_usd
            assert 0 < spent < 0.05  # recorded, and its hold released: room for the rest
            passed = other.reserve(
                engine.corpus_key, engine.answering, 0.9, cap=1.0, since=0, now=now, hold=60
            )
            assert passed is not None
            assert passed.key is not None
