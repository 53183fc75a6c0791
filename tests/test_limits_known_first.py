"""The account's rate limits known before the first plan: from `--tier`, from a limits
file's own `tier`, and otherwise learned from the API before the folder is first planned
(engine/limits_learned.py), so that shards and slices fit the account from the start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.api.ratelimits import (
    KINDS,
    Bucket,
    Kind,
    RateLimits,
    least_input_tokens_per_minute,
)
from corpus_cache.cli.main import build_parser, settings_from_args
from corpus_cache.emulator import RunningEmulator
from corpus_cache.engine.core import Engine
from corpus_cache.engine.remembered_limits import MAX_AGE_SECONDS, RememberedLimits
from corpus_cache.engine.runtime import running_engine
from corpus_cache.models.limits import load_limits
from support.corpus_fixture import write_corpus
from support.emulator_control import Control, EmulatorTime
from support.engines import engine_on

pytestmark = pytest.mark.anyio

MODEL = "claude-sonnet-5-5"


def small_tier_file(path: Path, itpm: int = 12_345) -> Path:
    path.write_text(
        'tier = "small"\n[tiers.small]\ncount_tokens_rpm = 777\n'
        f"[tiers.small.classes.sonnet-5-5]\nrpm = 60\nitpm = {itpm}\notpm = 9_000\n"
    )
    return path


async def test_serve_with_a_limits_file_that_names_a_tier_assumes_that_tiers_figures(
    tmp_path: Path,
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    limits = small_tier_file(tmp_path / "limits.toml")
    args = build_parser().parse_args(
        ["serve", "--corpus", str(corpus), "--model", MODEL, "--limits-file", str(limits)]
    )
    # As `serve` starts its engine: offline, with the emulator it starts applying the file.
    async with running_engine(settings_from_args(args)) as engine:
        assert engine.caller.limits.input_tokens_per_minute == 12_345
        assert engine.caller.count_limits.requests_per_minute == 777
        assert engine.caller.limits.source.startswith("tier small of the limits table")
        await engine.ask("When are deploys frozen?")
        assert engine.caller.limits.input_tokens_per_minute == 12_345  # as the emulator says


# --- without --tier: learned before the first plan, remembered across a restart ----------

T0 = 1_800_000_000.0
QUESTION = "When does the on-call rotation hand over?"


def messages(emulator: Control) -> list[dict[str, Any]]:
    return [e for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", filler_sentences=400)  # about 37k tokens


@asynccontextmanager
async def serving_engine(
    corpus: Path, state: Path, base_url: str, time: EmulatorTime, **settings: Any
) -> AsyncIterator[Engine]:
    """An engine as `serve` runs it (builds in the background), not told the tier."""
    async with (
        engine_on(
            corpus, base_url, state, clock=time.clock, sleep=time.sleep, model=MODEL,
            ask_deadline=3_600, **settings,
        ) as engine,
        engine.builder.running(),
    ):  # fmt: skip
        yield engine


async def test_without_a_tier_the_first_question_at_tier_1_is_built_in_slices_and_meets_no_429(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    emulator.limits(tier=1)  # 30,000 input tokens a minute: less than the corpus
    time = EmulatorTime(emulator)
    async with serving_engine(corpus, tmp_path / "state", running_emulator.base_url, time) as e:
        assert e.current.corpus_tokens > 30_000
        assert e.caller.limits.input_tokens_per_minute == 30_000  # known at the first plan
        answer = await e.ask(QUESTION)
        second = await e.ask("When are production deploys frozen?")
        rows = e.ledger.requests(e.corpus_key, limit=100)
    assert answer.citations
    assert second.citations
    sent = messages(emulator)
    assert [entry["status"] for entry in sent] == [200] * len(sent)  # no 429, ever
    probe, *builds, _, _ = sent
    assert probe["body"]["max_tokens"] == 1  # the one small request, before any write
    assert len(builds) >= 2
    assert all(b["body"]["max_tokens"] == 0 for b in builds)
    learned = [row for row in rows if row.kind == "limits"]
    assert len(learned) == 1
    assert 0 < learned[0].cost_usd < 0.0001  # recorded, and shown in the spend, like any


async def test_a_restart_plans_with_the_remembered_limits_and_asks_again_after_a_day(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    emulator.limits(tier=1)
    time = EmulatorTime(emulator)
    state = tmp_path / "state"
    async with serving_engine(corpus, state, running_emulator.base_url, time):
        pass
    assert len(messages(emulator)) == 1
    async with serving_engine(corpus, state, running_emulator.base_url, time) as again:
        assert again.caller.limits.input_tokens_per_minute == 30_000
        assert "remembered" in again.caller.limits.source
    assert len(messages(emulator)) == 1  # nothing sent to learn them again
    time.now += MAX_AGE_SECONDS + 1
    emulator.advance(MAX_AGE_SECONDS + 1)
    async with serving_engine(corpus, state, running_emulator.base_url, time):
        pass
    assert len(messages(emulator)) == 2


async def test_an_api_that_states_no_limits_is_asked_once_and_a_small_corpus_never(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)  # no limits: responses carry no rate-limit headers
    time = EmulatorTime(emulator)
    state = tmp_path / "state"
    for _ in range(2):
        async with serving_engine(corpus, state, running_emulator.base_url, time) as engine:
            assert not engine.caller.limits.buckets
    assert len(messages(emulator)) == 1
    small = write_corpus(tmp_path / "small")  # one request writes it at any tier
    async with serving_engine(small, tmp_path / "other", running_emulator.base_url, time):
        pass
    assert len(messages(emulator)) == 1


async def test_shards_are_sized_by_the_learned_limit_even_if_status_was_read_while_indexing(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    emulator.limits(tier=1)
    time = EmulatorTime(emulator)
    async with serving_engine(
        corpus, tmp_path / "state", running_emulator.base_url, time, index=False,
        build_minutes=1,  # shards of 30,000 tokens at tier 1: the corpus makes two
    ) as engine:  # fmt: skip
        before = engine.budget_tokens  # what cache_status shows while indexing
        await engine.refresh()
        assert before > engine.budget_tokens == 30_000
        assert len(engine.current.shards) == 2


def test_the_lowest_input_limit_of_the_table_is_the_model_classs_own() -> None:
    table = load_limits()
    assert least_input_tokens_per_minute(table, "claude-sonnet-5-5") == 30_000
    assert least_input_tokens_per_minute(table, "claude-haiku-4-5") == 50_000
    assert least_input_tokens_per_minute(table, "a-model-in-no-class") is None


@given(
    figures=st.dictionaries(
        st.sampled_from(KINDS),
        st.tuples(st.integers(1, 10_000_000), st.floats(-1e6, 1e7), st.floats(0, 2e9)),
    ),
    age=st.floats(0, 2 * MAX_AGE_SECONDS),
)
def test_limits_kept_in_the_state_folder_come_back_as_they_were_until_they_are_a_day_old(
    tmp_path_factory: pytest.TempPathFactory,
    figures: dict[Kind, tuple[int, float, float]],
    age: float,
) -> None:
    state = tmp_path_factory.mktemp("state")
    limits = RateLimits({k: Bucket(*f) for k, f in figures.items()}, "the API's headers")
    RememberedLimits(state, "account").save(limits, T0)
    back = RememberedLimits(state, "account").load(T0 + age)
    if age > MAX_AGE_SECONDS:
        assert back is None
        return
    assert back is not None
    assert back.limits.buckets == limits.buckets
    assert RememberedLimits(state, "another account").load(T0) is None


def test_an_unreadable_record_is_ignored_and_the_api_asked_again(tmp_path: Path) -> None:
    (tmp_path / "rate-limits.json").write_text("{not json")
    assert RememberedLimits(tmp_path, "account").load(T0) is None
    RememberedLimits(tmp_path, "account").save(RateLimits.unknown(), T0)
    again = RememberedLimits(tmp_path, "account").load(T0)
    assert again is not None
    assert not again.limits.buckets  # the API stated none: remembered as such


async def test_a_folder_that_grows_past_one_request_at_the_lowest_tier_is_asked_about_then(
    tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    emulator.limits(tier=1)
    time = EmulatorTime(emulator)
    folder = write_corpus(tmp_path / "corpus")  # small: nothing to learn yet
    async with serving_engine(folder, tmp_path / "state", running_emulator.base_url, time) as e:
        assert not messages(emulator)
        write_corpus(folder, filler_sentences=400)  # the same files, grown past 30,000 tokens
        await e.refresh()
        assert e.caller.limits.input_tokens_per_minute == 30_000
        answer = await e.ask(QUESTION)
    assert answer.citations
    assert [entry["status"] for entry in messages(emulator)] == [200] * len(messages(emulator))
