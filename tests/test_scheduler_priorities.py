"""One queue for everything that spends from the rate-limit buckets, on the emulator with
tight limits: questions go before background work, token counting waits for its own
bucket, a question the buckets would hold past the client's deadline is refused at once,
and cache_status shows the limits and what waits for them.

The emulator's clock is frozen; the engine's sleep waits until the test moves it (or, where
the order of events does not matter, moves it itself), so a minute's wait takes no time.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from corpus_cache.emulator import RunningEmulator
from corpus_cache.engine.warm import warm_shard
from corpus_cache.errors import RateLimitWaitError
from corpus_cache.mcp_surface.results import render_status, status
from corpus_cache.plan.staging import SLICE_SHARE
from support.corpus_fixture import write_corpus
from support.emulator_control import Control, EmulatorTime
from support.engines import engine_on
from support.mcp_session import serving

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0
MODEL = "claude-sonnet-5-5"
ROUTING = "Which port does the routing engine Kestrel listen on?"


class Stepper:
    """The engine's clock and sleep on the emulator's frozen clock: a sleep lasts until the
    test advances the clock past its end."""

    def __init__(self, emulator: Control) -> None:
        self.emulator = emulator
        self.now = T0
        self.slept: list[float] = []
        self._moved = anyio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        until = self.now + seconds
        while self.now < until:
            await self._moved.wait()

    async def advance(self, seconds: float) -> None:
        self.emulator.advance(seconds)
        self.now += seconds
        self._moved.set()
        self._moved = anyio.Event()
        await anyio.wait_all_tasks_blocked()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", filler_sentences=90)


async def test_a_question_is_sent_while_a_warm_request_waits_for_the_input_bucket(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    time = Stepper(emulator)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL, budget_tokens=4_500,
        clock=time.clock, sleep=time.sleep,
    ) as engine:  # fmt: skip
        live = engine.current
        shard_of = live.layout.shard_of()
        asked = live.shard(shard_of["architecture/routing.md"])
        other = next(s for s in live.shards if s.number != asked.number and s.plan.cached)
        # Room for the asked shard's write and half the other's: warming it must wait.
        itpm = asked.plan.total_tokens + other.plan.total_tokens // 2 + 1_000
        emulator.limits(itpm=itpm, rpm=1_000, otpm=100_000)
        first = await engine.ask(ROUTING)
        assert first.usage.cache_write_tokens > 0
        warmed = []
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:

                async def warm_other() -> None:
                    warmed.append(await warm_shard(engine, live, other, "warm"))

                group.start_soon(warm_other)
                await anyio.wait_all_tasks_blocked()
                assert not warmed  # waiting for the bucket
                shown = render_status(status(engine))
                assert "Waiting: 1 request for the input-token bucket, about" in shown
                assert "the API's rate-limit headers" in shown
                # A question reading its cached shard goes now, ahead of the warm request.
                again = await engine.ask(ROUTING)
                assert again.usage.cache_read_tokens > 0
                assert not warmed
                await time.advance(60)
        assert warmed
        assert warmed[0].usage.cache_write_tokens > 0
    assert 429 not in [entry["status"] for entry in emulator.log()]


async def test_token_counting_waits_for_its_own_bucket_instead_of_meeting_a_429(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    time = EmulatorTime(emulator, T0)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL, clock=time.clock,
        sleep=time.sleep,
    ) as engine:  # fmt: skip
        emulator.limits(count_tokens_rpm=3)
        for _ in range(5):
            await engine.caller.count_tokens([{"type": "text", "text": "How many tokens?"}])
        assert engine.caller.count_limits.requests_per_minute == 3  # from the headers
    counts = [e for e in emulator.log() if e["path"] == "/v1/messages/count_tokens"]
    assert [e["status"] for e in counts[-5:]] == [200] * 5
    assert sum(time.waits) == pytest.approx(40, abs=0.1)  # three at once, then one every 20 s


async def test_a_question_the_buckets_would_hold_past_the_deadline_is_refused_at_once(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    time = Stepper(emulator)
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL, clock=time.clock,
        sleep=time.sleep,
    ) as engine:  # fmt: skip
        written = engine.current.shards[0].plan.total_tokens
        # Room for one write of the corpus a minute, in one request (no staged build): the
        # next write waits most of a minute.
        emulator.limits(itpm=int((written + 800) / SLICE_SHARE), rpm=1_000, otpm=100_000)
        await engine.ask("When does the on-call rotation hand over?", patience=30)
        routing = corpus / "architecture" / "routing.md"
        routing.write_text(routing.read_text() + "\nKestrel moved to port 7444.\n")
        await engine.refresh()
        sent_before = len(emulator.log())
        with anyio.fail_after(5), pytest.raises(RateLimitWaitError) as refused:
            await engine.ask(ROUTING, patience=30)
        assert len(emulator.log()) == sent_before  # nothing was sent
        assert time.slept == []  # nor waited for
        message = str(refused.value)
        assert "Ask again in about" in message
        assert "longer than your client waits (30 s)" in message
        assert "nothing was spent" in message
        assert refused.value.wait_seconds > 20
        # Without a deadline (the command line), the question waits its turn instead.
        async with anyio.create_task_group() as group:
            group.start_soon(engine.ask, ROUTING)
            await anyio.wait_all_tasks_blocked()
            await time.advance(refused.value.wait_seconds + 1)
    assert 429 not in [entry["status"] for entry in emulator.log()]


async def test_cache_status_shows_the_tiers_limits_before_any_response(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    async with engine_on(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL, tier="1"
    ) as engine:
        out = status(engine)
        assert out.rate_limits is not None
        assert out.rate_limits.messages["input_tokens"].per_minute == 30_000
        assert out.rate_limits.count_tokens is not None
        assert out.rate_limits.count_tokens.per_minute == 100
        shown = render_status(out)
    assert "Rate limits (tier 1 of the limits table" in shown
    assert "30,000 input tokens" in shown


async def test_the_ask_tool_says_at_once_when_to_ask_again_instead_of_timing_out(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    time = Stepper(emulator)
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "state", model=MODEL, clock=time.clock,
        sleep=time.sleep, ask_deadline=30,
    ) as (mcp, engine):  # fmt: skip
        written = engine.current.shards[0].plan.total_tokens
        emulator.limits(itpm=int((written + 800) / SLICE_SHARE), rpm=1_000, otpm=100_000)
        first = await mcp.call_tool("ask", {"question": "Who is on call on Tuesday?"})
        assert not first.is_error
        routing = corpus / "architecture" / "routing.md"
        routing.write_text(routing.read_text() + "\nKestrel moved to port 7444.\n")
        await engine.refresh()
        with anyio.fail_after(10):
            refused = await mcp.call_tool("ask", {"question": ROUTING})
    assert refused.is_error
    text = refused.content[0].text  # type: ignore[union-attr]
    assert "Ask again in about" in text
    assert "longer than your client waits" in text
