"""Several `corpus-cache serve` processes on one folder and one state folder (two Claude
Code windows on one project), each driven by a real MCP client over stdio, all asking one
emulator with one key: what one learns the others use (accounting/shared.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from corpus_cache.emulator import RunningEmulator
from corpus_cache.errors import RateLimitWaitError
from support.corpus_fixture import write_corpus
from support.emulator_control import Control, EmulatorTime
from support.engines import engine_on

pytestmark = pytest.mark.anyio

QUESTION = "Which port does Kestrel listen on?"


@asynccontextmanager
async def windows(
    count: int, corpus: Path, state: Path, base_url: str, *flags: str
) -> AsyncIterator[list[Client]]:
    """`count` servers on `corpus` sharing `state`, each with its MCP client, once each has
    indexed the folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env |= {
        "CORPUS_CACHE_STATE_DIR": str(state),
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": base_url,
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corpus_cache", "serve", "--corpus", str(corpus), "--no-watch", *flags],
        env=env,
    )
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(params)) for _ in range(count)]
        for client in clients:
            with anyio.fail_after(60):  # bounded: each indexes the folder on its own
                while (await client.call_tool("search", {"query": "Kestrel"})).is_error:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
        yield clients


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text
    content: dict[str, Any] = result.structured_content
    return content


def cache_writes(emulator: Control) -> int:
    """Messages requests the emulator billed a cache write."""
    return sum(
        e["billed"]["usage"]["cache_creation_input_tokens"] > 0
        for e in emulator.log()
        if e.get("path") == "/v1/messages" and "billed" in e
    )


async def at_once(clients: list[Client], emulator: Control) -> list[dict[str, Any]]:
    """The same cold question asked of every instance at once, and their answers."""
    # The writer's response begins only after a while: without coordination, every other
    # instance would send its own request meanwhile and write the prefix too.
    emulator.fault(kind="delay", delay=1.5)
    answers: list[dict[str, Any]] = []

    async def ask(client: Client) -> None:
        answers.append(structured(await client.call_tool("ask", {"question": QUESTION})))

    async with anyio.create_task_group() as group:
        for client in clients:
            group.start_soon(ask, client)
    return answers


async def test_cold_questions_asked_at_once_of_four_instances_write_the_cache_once(
    running_emulator: RunningEmulator, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with windows(4, corpus, tmp_path / "state", running_emulator.base_url) as clients:
        answers = await at_once(clients, emulator)
    assert cache_writes(emulator) == 1
    assert sorted(a["usage"]["cache_read_tokens"] > 0 for a in answers) == [False, *[True] * 3]


async def test_two_instances_asked_at_once_write_once_and_each_counts_the_others_gaps(
    running_emulator: RunningEmulator, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with windows(2, corpus, tmp_path / "state", running_emulator.base_url) as (a, b):
        answers = await at_once([a, b], emulator)
        writes = cache_writes(emulator)
        structured(await a.call_tool("ask", {"question": "When are deploys frozen?"}))
        last = structured(await b.call_tool("ask", {"question": "Who is on call?"}))
        status = structured(await b.call_tool("cache_status", {}))
    assert writes == 1
    assert sorted(a["usage"]["cache_read_tokens"] > 0 for a in answers) == [False, True]
    assert last["usage"]["cache_read_tokens"] > 0  # B reads what A's questions keep alive
    (policy,) = status["cache_policy"]
    assert "(last 3 gaps)" in policy["reason"]  # between all four questions, A's and B's


async def test_the_daily_cap_holds_across_instances_asked_at_once(
    running_emulator: RunningEmulator, emulator: Control, tmp_path: Path
) -> None:
    corpus, state = write_corpus(tmp_path / "corpus"), tmp_path / "state"
    async with engine_on(corpus, running_emulator.base_url, state) as first:
        # Twice: the second question marks what the first left cold, so that the prefix
        # is warm for the questions below (none of them waits for another's write).
        await first.ask(QUESTION)
        primed = await first.ask(QUESTION)
        assert primed.usage.cache_read_tokens > 0
        spent = first.totals().cost_usd
        estimate = primed.estimated_usd
    # Room for the day's spend and one more question, not two.
    cap = spent + 1.5 * estimate
    flags = ("--max-usd-per-day", f"{cap:.6f}")
    async with windows(2, corpus, state, running_emulator.base_url, *flags) as clients:
        # Responses are held at the emulator until its clock moves: the first question
        # sent is under way while the second is checked against the cap.
        emulator.latency(mode="realistic")
        emulator.freeze()
        outcomes: list[Any] = []
        refused = anyio.Event()

        async def ask(client: Client) -> None:
            result = await client.call_tool("ask", {"question": QUESTION})
            outcomes.append(result)
            if result.is_error:
                refused.set()

        async with anyio.create_task_group() as group:
            for client in clients:
                group.start_soon(ask, client)
            with anyio.fail_after(30):
                await refused.wait()
                # The question sent gets its answer once the clock moves past its time
                # (moved again until it does: it may reach the emulator after a move).
                while len(outcomes) < 2:
                    emulator.advance(60)
                    await anyio.sleep(0.05)
    texts = [r.content[0].text[:300] for r in outcomes]
    assert sorted(r.is_error for r in outcomes) == [False, True], texts
    (refusal,) = [r for r in outcomes if r.is_error]
    assert "daily" in refusal.content[0].text or "cap" in refusal.content[0].text


async def test_an_instance_does_not_send_what_another_ones_last_headers_say_cannot_fit(
    running_emulator: RunningEmulator, emulator: Control, tmp_path: Path
) -> None:
    corpus, state = write_corpus(tmp_path / "corpus"), tmp_path / "state"
    base_url = running_emulator.base_url
    async with (
        engine_on(corpus, base_url, state) as first,
        engine_on(corpus, base_url, state) as second,
    ):
        # One request a minute for the organisation, and the second engine has never
        # seen a response: only the first one's headers say the minute is spent.
        emulator.limits(rpm=1, itpm=1_000_000, otpm=100_000, count_tokens_rpm=10_000)
        await first.ask(QUESTION)
        with pytest.raises(RateLimitWaitError):
            await second.ask("When are deploys frozen?", patience=30)
    sent = [e for e in emulator.log() if e.get("path") == "/v1/messages"]
    assert len(sent) == 1  # refused unsent: no 429


async def test_an_instance_waits_for_the_counting_bucket_another_one_spent(
    running_emulator: RunningEmulator, emulator: Control, tmp_path: Path
) -> None:
    corpus, state = write_corpus(tmp_path / "corpus"), tmp_path / "state"
    emulator.freeze(at=1_800_000_000.0)
    time = EmulatorTime(emulator, 1_800_000_000.0)
    timed = {"clock": time.clock, "sleep": time.sleep}
    async with (
        engine_on(corpus, running_emulator.base_url, state, **timed) as first,
        engine_on(corpus, running_emulator.base_url, state, **timed) as second,
    ):
        # One count a minute for the organisation; only the first engine has seen it spent.
        emulator.limits(rpm=1_000, itpm=1_000_000, otpm=100_000, count_tokens_rpm=1)
        text = [{"type": "text", "text": "How many tokens is this?"}]
        await first.caller.count_tokens(text)
        await second.caller.count_tokens(text)
    counted = [e for e in emulator.log() if e.get("path", "").endswith("/count_tokens")]
    assert [e["status"] for e in counted[-2:]] == [200, 200]  # no 429: it waited instead
    assert max(time.waits) > 30
