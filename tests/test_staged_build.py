"""A corpus larger than the input-token rate limit is written to the cache a slice per
request (engine/build.py), then read whole by every question.

The emulator's clock is frozen; the engine reads it and waits by moving it (as in
test_pacing), so a build of several minutes takes no time and the emulator's buckets
refill exactly as the caller expects. The emulator and the engine know the same limits:
a tier of a limits file for the engine before the first response, the same figures set
on the emulator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from corpus_cache.emulator import RunningEmulator
from corpus_cache.engine.core import Engine
from corpus_cache.engine.warm import prewarm_after_changes, warm_shard
from corpus_cache.errors import BeyondRateLimitError, CacheBuildingError
from support.corpus_fixture import document, write_corpus
from support.emulator_control import Control, EmulatorTime
from support.engines import engine_on
from support.mcp_session import Client, build_server

pytestmark = pytest.mark.anyio

T0 = 1_800_000_000.0
MODEL = "claude-sonnet-5-5"
QUESTION = "When does the on-call rotation hand over?"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", filler_sentences=200)


def limited(tmp_path: Path, emulator: Control, itpm: int) -> dict[str, Any]:
    """Settings for an engine that knows the account's limit of `itpm` input tokens a
    minute before its first response; the emulator applies the same."""
    limits_file = tmp_path / "limits.toml"
    limits_file.write_text(
        "[tiers.small]\ncount_tokens_rpm = 10000\n"
        f"[tiers.small.classes.sonnet-5-5]\nrpm = 1000\nitpm = {itpm}\notpm = 100000\n"
    )
    emulator.limits(itpm=itpm, rpm=1_000, otpm=100_000, count_tokens_rpm=10_000)
    return {"tier": "small", "limits_file": limits_file, "model": MODEL}


@asynccontextmanager
async def building(
    corpus: Path, state: Path, base_url: str, time: EmulatorTime, **settings: Any
) -> AsyncIterator[Engine]:
    async with (
        engine_on(
            corpus, base_url, state, clock=time.clock, sleep=time.sleep, **settings
        ) as engine,
        engine.builder.running(),
    ):
        yield engine


def messages(emulator: Control) -> list[dict[str, Any]]:
    return [e for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"]


def written(entry: dict[str, Any]) -> int:
    usage = entry["usage"]
    return int(usage["input_tokens"] + usage["cache_creation_input_tokens"])


async def corpus_tokens(corpus: Path, state: Path, base_url: str) -> int:
    async with engine_on(corpus, base_url, state, model=MODEL) as engine:
        return engine.current.shards[0].plan.total_tokens


async def test_a_corpus_over_the_limit_is_built_in_slices_then_read_whole_by_a_question(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    total = await corpus_tokens(corpus, tmp_path / "count", running_emulator.base_url)
    itpm = total // 3  # the corpus is three minutes of the input bucket
    settings = limited(tmp_path, emulator, itpm)
    time = EmulatorTime(emulator)
    log_start = len(messages(emulator))
    async with building(
        corpus, tmp_path / "state", running_emulator.base_url, time, ask_deadline=3_600,
        **settings,
    ) as engine:  # fmt: skip
        answer = await engine.ask(QUESTION)
        assert engine.builder.describe() is None  # done
    sent = messages(emulator)[log_start:]
    assert all(entry["status"] == 200 for entry in sent)  # no 429
    builds, (question,) = sent[:-1], sent[-1:]
    assert len(builds) >= 4
    assert all(entry["body"]["max_tokens"] == 0 for entry in builds)
    assert all(written(entry) <= itpm for entry in sent)
    assert all(entry["usage"]["cache_read_input_tokens"] > 0 for entry in builds[1:])
    usage = question["usage"]
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
    prompt += usage["cache_creation_input_tokens"]
    assert usage["cache_read_input_tokens"] >= 0.95 * prompt
    assert answer.usage.cache_read_tokens == usage["cache_read_input_tokens"]
    assert time.sleeps >= 2  # it waited for the bucket rather than meeting a 429


async def test_a_question_that_the_build_cannot_finish_in_time_for_says_when_to_ask_again(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    total = await corpus_tokens(corpus, tmp_path / "count", running_emulator.base_url)
    settings = limited(tmp_path, emulator, total // 3)
    time = EmulatorTime(emulator)
    log_start = len(messages(emulator))
    async with building(
        corpus, tmp_path / "state", running_emulator.base_url, time, ask_deadline=50, **settings
    ) as engine:
        with pytest.raises(CacheBuildingError) as building_now:
            await engine.ask(QUESTION)
        said = str(building_now.value)
        assert said.startswith("Building the cache: 0 of 4 slices, done in about ")
        assert "the question was not sent" in said
        assert "Ask again in " in said
        assert building_now.value.retry_after > engine.build_patience
        # The build goes on without the question; asked again when it is done, it reads it.
        with anyio.fail_after(30):
            await engine.builder.wait(0)
        answer = await engine.ask(QUESTION)
    sent = messages(emulator)[log_start:]
    assert [e["status"] for e in sent] == [200] * 5
    assert [e["body"]["max_tokens"] for e in sent[:4]] == [0] * 4  # the build, then the question
    prompt = answer.usage.cache_read_tokens + answer.usage.cache_write_tokens
    assert answer.usage.cache_read_tokens >= 0.95 * (prompt + answer.usage.input_tokens)


async def test_a_build_resumes_after_a_restart_without_writing_its_live_slices_again(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    total = await corpus_tokens(corpus, tmp_path / "count", running_emulator.base_url)
    settings = limited(tmp_path, emulator, total // 3)
    state = tmp_path / "state"
    first = EmulatorTime(emulator)
    first.hold_at = 2  # the second wait for the bucket never ends: two slices are written
    log_start = len(messages(emulator))
    async with (
        building(
            corpus, state, running_emulator.base_url, first, ask_deadline=3_600, **settings
        ) as engine,
        anyio.create_task_group() as group,
    ):
        group.start_soon(engine.ask, QUESTION)
        with anyio.fail_after(30):
            await first.held.wait()
        group.cancel_scope.cancel()  # the server stops half-way through the build
    before = messages(emulator)[log_start:]
    assert len(before) == 2
    emulator.advance(60)  # the restart takes a minute
    second = EmulatorTime(emulator)
    second.now = first.now + 60
    async with building(
        corpus, state, running_emulator.base_url, second, ask_deadline=3_600, **settings
    ) as engine:
        answer = await engine.ask(QUESTION)
    after = messages(emulator)[log_start + 2 :]
    assert [e["status"] for e in before + after] == [200] * 5
    # The restarted build reads what the first wrote, and writes only the rest.
    assert after[0]["usage"]["cache_read_input_tokens"] == sum(
        e["usage"]["cache_creation_input_tokens"] for e in before
    )
    positions = [p for e in before + after[:-1] for p in e["written_positions"]]
    assert len(positions) == len(set(positions))
    assert answer.usage.cache_read_tokens >= 0.95 * total


async def test_over_mcp_the_build_shows_in_cache_status_and_the_stats_and_ask_says_so(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    total = await corpus_tokens(corpus, tmp_path / "count", running_emulator.base_url)
    settings = limited(tmp_path, emulator, total // 3)
    time = EmulatorTime(emulator)
    time.hold_at = 2
    async with (
        building(corpus, tmp_path / "state", running_emulator.base_url, time, **settings) as engine,
        Client(build_server(engine)) as mcp,  # type: ignore[arg-type]
    ):
        asked = await mcp.call_tool("ask", {"question": QUESTION})
        assert asked.is_error
        told = asked.content[0].text  # type: ignore[union-attr]
        assert "Building the cache: 0 of 4 slices, done in about " in told
        assert "Ask again in" in told
        with anyio.fail_after(30):
            await time.held.wait()
        status = await mcp.call_tool("cache_status", {})
        text = status.content[0].text  # type: ignore[union-attr]
        assert "Building the cache: 2 of 4 slices, done in about " in text
        (build,) = status.structured_content["cache_build"]  # type: ignore[index]
        assert (build["slices_done"], build["slices"], build["failed"]) == (2, 4, None)
        stats = await mcp.read_resource("corpus://stats")
        body = stats.contents[0].text  # type: ignore[union-attr]
        assert '"slices_done": 2' in body
        time.release.set()
        with anyio.fail_after(30):
            await engine.builder.wait(0)
        status = await mcp.call_tool("cache_status", {})
        assert "Building the cache" not in status.content[0].text  # type: ignore[union-attr]


async def test_a_question_that_waits_for_the_build_hears_how_far_it_is(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    total = await corpus_tokens(corpus, tmp_path / "count", running_emulator.base_url)
    settings = limited(tmp_path, emulator, total // 3)
    time = EmulatorTime(emulator)
    time.hold_at = 2  # held until a progress notification has told how far the build is
    heard: list[str] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")
        if "building the cache: 2 of 4 slices" in (message or ""):
            time.release.set()

    async with (
        building(
            corpus, tmp_path / "state", running_emulator.base_url, time, ask_deadline=3_600,
            heartbeat_interval=0.01, **settings,
        ) as engine,
        Client(build_server(engine)) as mcp,  # type: ignore[arg-type]
    ):  # fmt: skip
        with anyio.fail_after(30):
            asked = await mcp.call_tool("ask", {"question": QUESTION}, progress_callback=progress)
    assert not asked.is_error
    assert asked.structured_content["usage"]["cache_read_tokens"] >= 0.95 * total  # type: ignore[index]
    assert any(m.startswith("building the cache: 2 of 4 slices") for m in heard)


async def test_a_build_longer_than_the_ttl_keeps_the_layouts_first_entry_alive(
    tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"part{i:02d}.md").write_text(f"# part {i}\n\n{document(i, 25)}\n")
    total = await corpus_tokens(corpus, tmp_path / "count", running_emulator.base_url)
    settings = limited(tmp_path, emulator, total // 8)  # about ten slices: over 5 minutes
    time = EmulatorTime(emulator)
    async with building(
        corpus, tmp_path / "state", running_emulator.base_url, time, ask_deadline=3_600,
        build_minutes=None,  # one shard, however long it takes to build
        **settings,
    ) as engine:  # fmt: skip
        live = engine.current
        shard = live.shards[0]
        built = await engine.builder.build(live, shard)
        assert built is not None
        assert time.now - T0 > 300  # longer than the 5-minute entries it began with
        # A request through the layout's first anchor only: it reads, and writes nothing.
        read = await warm_shard(engine, live, shard, "keep-warm", through=shard.plan.anchors[0])
    assert read.usage.cache_read_tokens > 0
    assert read.usage.cache_write_tokens == 0


async def test_shards_sized_by_the_limits_keep_the_size_the_first_plan_gave_them(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    settings = limited(tmp_path, emulator, 8_000)
    time = EmulatorTime(emulator)
    async with building(
        corpus, tmp_path / "state", running_emulator.base_url, time, build_minutes=2,
        ask_deadline=3_600, **settings,
    ) as engine:  # fmt: skip
        assert engine.budget_tokens == 16_000  # two minutes of the bucket
        assert len(engine.current.shards) == 2
        emulator.limits(itpm=12_000, rpm=1_000, otpm=100_000)
        await engine.ask(QUESTION)
        assert engine.caller.limits.input_tokens_per_minute == 12_000  # as the headers say
        assert engine.budget_tokens == 16_000  # but the shards stay as they were


async def test_a_document_larger_than_a_slice_is_refused_unsent_and_named(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    settings = limited(tmp_path, emulator, 5_000)  # a slice of 3,994: each document is more
    time = EmulatorTime(emulator)
    async with building(
        corpus, tmp_path / "state", running_emulator.base_url, time, **settings
    ) as engine:
        sent_before = len(messages(emulator))
        with pytest.raises(BeyondRateLimitError, match="can never pass") as refused:
            await engine.ask(QUESTION)
    assert "the document " in str(refused.value)
    assert "Leave it out of the folder" in str(refused.value)
    assert len(messages(emulator)) == sent_before


async def test_with_prewarm_an_edit_starts_a_build_in_the_background_and_the_refresh_goes_on(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    emulator.freeze(T0)
    total = await corpus_tokens(corpus, tmp_path / "count", running_emulator.base_url)
    settings = limited(tmp_path, emulator, total // 3)
    time = EmulatorTime(emulator)
    async with building(
        corpus, tmp_path / "state", running_emulator.base_url, time, ask_deadline=3_600,
        prewarm=True, watch=False, **settings,
    ) as engine:  # fmt: skip
        prewarm_after_changes(engine)  # as `serve` does
        await engine.ask(QUESTION)  # built
        time.hold_at = time.sleeps + 1  # the next wait for the bucket holds the build
        first = engine.current.shards[0].plan.order[0]
        # An edit that removes text: the prefix from this first document on is written again.
        text = (corpus / first).read_text()
        (corpus / first).write_text(text.replace("\n", " (edited)\n", 1))
        with anyio.fail_after(30):
            await engine.refresh()  # returns while the build goes on
            await time.held.wait()
        assert engine.builder.building(0)
        time.release.set()
        with anyio.fail_after(30):
            await engine.builder.wait(0)
        answer = await engine.ask(QUESTION)
    assert answer.usage.cache_read_tokens >= 0.95 * answer.usage.prompt_tokens
    assert 429 not in [e["status"] for e in messages(emulator)]


async def test_a_question_the_routing_is_unsure_of_leaves_out_a_runner_up_that_needs_a_build(
    tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    # An extra shard is not worth a wait: an unsure question asks the runner-up too only
    # when that shard can be asked at once.
    corpus = write_corpus(tmp_path / "corpus", filler_sentences=90)  # as in test_shards
    emulator.freeze(T0)
    settings = limited(tmp_path, emulator, 4_000)  # a slice holds a document, not a shard
    time = EmulatorTime(emulator)
    question = "Which weekday: the rotation hands over, or deploys are frozen?"
    async with building(
        corpus, tmp_path / "state", running_emulator.base_url, time, ask_deadline=3_600,
        budget_tokens=6_000, **settings,
    ) as engine:  # fmt: skip
        live = engine.current
        shard_of = live.layout.shard_of()
        assert shard_of["deploys.md"] != shard_of["oncall.md"]
        assert all(s.corpus_tokens > 4_000 for s in live.shards)  # more than a slice
        best, runner_up = engine.route(question, live, fan_out=2)
        assert engine.builder.needed(live, best)
        assert engine.builder.needed(live, runner_up)
        asked = engine.route(question, live, None)
        assert [s.number for s in asked] == [best.number]  # the best is built when asked
        await engine.builder.ready(live, [runner_up], within=3_600)
        assert [s.number for s in engine.route(question, live, None)] == [
            best.number,
            runner_up.number,
        ]


async def test_two_instances_asked_at_once_build_each_slice_once(
    corpus: Path, tmp_path: Path, running_emulator: RunningEmulator, emulator: Control
) -> None:
    # Two windows on one folder, both asked before the shard is built: each slice is
    # claimed by one instance; the other waits for it, then goes on from there.
    emulator.freeze(T0)
    url = running_emulator.base_url
    total = await corpus_tokens(corpus, tmp_path / "count", url)
    settings = limited(tmp_path, emulator, total // 3)
    time = EmulatorTime(emulator)
    start = len(messages(emulator))
    async with building(
        corpus, tmp_path / "alone", url, time, ask_deadline=3_600, **settings
    ) as alone:
        await alone.ask(QUESTION)
    slices = [e for e in messages(emulator)[start:] if e["body"]["max_tokens"] == 0]
    emulator.post("reset")  # an empty cache, the same limits
    emulator.freeze(T0)
    settings = limited(tmp_path, emulator, total // 3)
    time = EmulatorTime(emulator)
    state = tmp_path / "shared-state"
    async with (
        building(corpus, state, url, time, ask_deadline=3_600, **settings) as one,
        building(corpus, state, url, time, ask_deadline=3_600, **settings) as two,
    ):
        answers = []

        async def ask(engine: Engine) -> None:
            answers.append(await engine.ask(QUESTION))

        async with anyio.create_task_group() as group:
            group.start_soon(ask, one)
            group.start_soon(ask, two)
    sent = messages(emulator)
    assert all(entry["status"] == 200 for entry in sent)
    assert len([e for e in sent if e["body"]["max_tokens"] == 0]) == len(slices) >= 3
    assert len(answers) == 2
