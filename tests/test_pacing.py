"""Requests wait for the rate limits instead of meeting a 429: the caller knows the buckets
from a tier before the first response and from every response's headers after it.

The emulator's clock is frozen; the engine reads it and waits by moving it, so a wait of a
minute takes no time and the emulator's buckets refill exactly as the caller expected.
"""

from __future__ import annotations

from pathlib import Path

import anthropic
import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.api.ratelimits import Bucket, Demand, RateLimits, wait_after_refusal
from corpus_cache.emulator import RunningEmulator
from corpus_cache.errors import BeyondRateLimitError
from support.corpus_fixture import write_corpus
from support.emulator_control import Control, EmulatorTime
from support.engines import engine_on
from support.prompts import text_block, user, words

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0
MODEL = "claude-sonnet-5-5"
ROUTING = "Which port does the routing engine Kestrel listen on?"

# --- the buckets, as pure logic -----------------------------------------------------------


def limits(itpm: int, level: float, seen: float = 0.0) -> RateLimits:
    return RateLimits({"input_tokens": Bucket(itpm, level, seen)}, "test")


@given(
    per_minute=st.integers(1, 2_000_000),
    level=st.floats(-2_000_000, 2_000_000),
    wanted=st.integers(0, 2_000_000),
    now=st.floats(0, 10_000),
)
def test_after_the_wait_it_gives_the_demand_fits_and_taking_it_leaves_nothing_negative(
    per_minute: int, level: float, wanted: int, now: float
) -> None:
    state = limits(per_minute, min(level, per_minute))
    wait = state.wait_seconds(Demand(input_tokens=wanted), now)
    if wanted > per_minute:
        assert wait is None
        return
    assert wait is not None
    assert wait >= 0
    later = now + wait
    assert state.wait_seconds(Demand(input_tokens=wanted), later) == 0
    after = state.taken(Demand(input_tokens=wanted), later)
    assert after.buckets["input_tokens"].available(later) >= -1e-6


@given(st.floats(0, 60), st.floats(0, 60))
def test_a_bucket_refills_at_its_rate_and_never_past_a_minutes_worth(
    first: float, second: float
) -> None:
    bucket = Bucket(6_000, 0.0, 0.0)  # 100 a second
    assert bucket.available(min(first, second)) <= bucket.available(max(first, second))
    assert bucket.available(first) == pytest.approx(min(6_000.0, 100 * first))
    assert bucket.available(10_000) == 6_000


def test_headers_replace_the_known_figures_less_what_is_still_in_flight() -> None:
    headers = {
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "12000",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
    }
    seen = RateLimits.unknown().observed(headers, 100.0, in_flight=Demand(1, 2_000, 0))
    assert seen.input_tokens_per_minute == 30_000
    assert seen.requests_per_minute == 50
    assert seen.output_tokens_per_minute is None  # not stated: not assumed
    # Rounded to the nearest thousand, so taken as the lower end; the 2,000 in flight after.
    assert seen.buckets["input_tokens"].available(100.0) == 12_000 - 500 - 2_000
    assert seen.buckets["requests"].available(100.0) == 48
    assert "headers" in seen.source


def test_headers_that_say_nothing_usable_change_nothing() -> None:
    known = limits(30_000, 30_000)
    for headers in ({}, {"anthropic-ratelimit-input-tokens-limit": "many"}):
        assert known.observed(headers, 5.0) is known


# --- through the engine and the emulator --------------------------------------------------


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", filler_sentences=200)


async def test_a_second_cold_write_waits_for_the_input_bucket_instead_of_meeting_a_429(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    time = EmulatorTime(emulator, T0)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL,
        clock=time.clock, sleep=time.sleep,
    ) as engine:  # fmt: skip
        written = engine.current.corpus_tokens
        # Room for one write of the corpus a minute, not two.
        emulator.limits(itpm=int(written * 1.6), rpm=1_000, otpm=100_000)
        first = await engine.ask("When does the on-call rotation hand over?")
        assert first.usage.cache_write_tokens > 0
        # An edit at the front of the corpus: the next question writes it all again.
        (corpus / "architecture" / "routing.md").write_text("# routing\n\nKestrel, port 7443.\n")
        await engine.refresh()
        second = await engine.ask("Which port does the routing engine listen on?")
        assert second.usage.cache_write_tokens > 0
    statuses = [entry["status"] for entry in emulator.log()]
    assert 429 not in statuses
    assert len(time.waits) == 1  # it waited once, the time the bucket needed
    assert time.waits[0] > 0


async def test_a_request_larger_than_the_tier_allows_is_refused_unsent_with_what_to_do(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    limits_file = tmp_path / "limits.toml"
    limits_file.write_text(
        "[tiers.tiny]\ncount_tokens_rpm = 1000\n"
        "[tiers.tiny.classes.sonnet-5-5]\nrpm = 50\nitpm = 1_000\notpm = 8_000\n"
    )
    time = EmulatorTime(emulator, T0)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL, tier="tiny",
        limits_file=limits_file, build_minutes=None,  # shards not sized by the limits
        clock=time.clock, sleep=time.sleep,
    ) as engine:  # fmt: skip
        assert engine.caller.limits.input_tokens_per_minute == 1_000
        sent_before = len([e for e in emulator.log() if e["path"] == "/v1/messages"])
        with pytest.raises(BeyondRateLimitError, match="can never pass") as refused:
            await engine.ask("When does the on-call rotation hand over?")
    assert "allows 1,000 a minute" in str(refused.value)
    assert "tier tiny" in str(refused.value)
    assert len([e for e in emulator.log() if e["path"] == "/v1/messages"]) == sent_before
    assert time.waits == []


async def test_the_headers_of_the_first_response_replace_the_tiers_figures(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    emulator.limits(itpm=400_000, rpm=77, otpm=90_000)
    time = EmulatorTime(emulator, T0)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL, tier="1",
        clock=time.clock, sleep=time.sleep,
    ) as engine:  # fmt: skip
        assert engine.caller.limits.input_tokens_per_minute == 30_000  # the table's tier 1
        await engine.ask("When does the on-call rotation hand over?")
        assert engine.caller.limits.input_tokens_per_minute == 400_000
        assert engine.caller.limits.requests_per_minute == 77


async def test_a_question_cancelled_while_it_waits_for_the_limits_leaves_no_row(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    waiting = anyio.Event()

    async def sleep_until_cancelled(seconds: float) -> None:
        waiting.set()
        await anyio.sleep_forever()

    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL,
        clock=lambda: T0, sleep=sleep_until_cancelled,
    ) as engine:  # fmt: skip
        engine.caller.limits = RateLimits({"input_tokens": Bucket(30_000, 0.0, T0)}, "test")
        rows_before = len(engine.ledger.requests(engine.corpus_key, limit=100))
        async with anyio.create_task_group() as group:
            group.start_soon(engine.ask, "When does the on-call rotation hand over?")
            await waiting.wait()
            group.cancel_scope.cancel()
        assert len(engine.ledger.requests(engine.corpus_key, limit=100)) == rows_before
    assert not [e for e in emulator.log() if e["path"] == "/v1/messages"]


def test_a_429_waits_the_longer_of_its_retry_after_and_what_its_headers_say_the_bucket_needs() -> (
    None
):
    known = limits(30_000, 30_000)  # we believed the bucket full: another program spent it
    refusal = {
        "retry-after": "3",
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "1000",
    }
    wait = wait_after_refusal(known, refusal, Demand(input_tokens=10_500), 0.0)
    assert wait == pytest.approx(20.0)  # 500 held (rounded down), 10,000 more at 500 a second
    assert wait_after_refusal(known, {"retry-after": "30"}, Demand(input_tokens=1), 0.0) == 30


async def test_a_429_from_another_program_on_the_key_is_retried_after_what_the_buckets_need(
    corpus: Path,
    tmp_path: Path,
    running_emulator: RunningEmulator,
    emulator: Control,
    client: anthropic.Anthropic,
) -> None:
    emulator.freeze(T0)
    time = EmulatorTime(emulator, T0)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL,
        clock=time.clock, sleep=time.sleep, max_retries=2,
    ) as engine:  # fmt: skip
        written = engine.current.shards[0].plan.total_tokens
        emulator.limits(itpm=written * 2, rpm=1_000, otpm=100_000)
        await engine.ask("When does the on-call rotation hand over?")  # the caller learns
        # Another program on the same key takes nearly all the caller believes is left.
        buckets = emulator.http.get("/_emulator/limits").json()["buckets"]
        (left,) = [c["input_tokens"] for w in buckets.values() for c in w.values()]
        text = words(int(left) - 500)
        counted = client.messages.count_tokens(model=MODEL, messages=user(text_block(text)))
        text = words(int(left) - 500 - (counted.input_tokens - (int(left) - 500)))
        client.messages.create(model=MODEL, max_tokens=1, messages=user(text_block(text)))
        routing = corpus / "architecture" / "routing.md"
        routing.write_text(routing.read_text() + "\nKestrel moved to port 7444.\n")
        await engine.refresh()
        with anyio.fail_after(10):
            answer = await engine.ask(ROUTING)
        assert answer.usage.cache_write_tokens > 0
    statuses = [e["status"] for e in emulator.log() if e["path"] == "/v1/messages"]
    assert statuses[-2:] == [429, 200]  # refused once, then retried and answered
    assert time.waits  # on the caller's clock, which the buckets refill on
