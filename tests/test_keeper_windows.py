"""Several `corpus-cache serve` processes on one folder and one state folder (two or four
Claude Code windows on one project), each driven by a real MCP client over stdio, against
one emulator on its virtual clock (CORPUS_CACHE_CLOCK=emulator): one keeps the cache."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from corpus_cache.accounting.lease import BEAT_SECONDS, LEASE_SECONDS
from corpus_cache.api.emulator_clock import EmulatorClock
from corpus_cache.cache.keeping import FIVE_MINUTE_PING
from corpus_cache.cache.policy import FIVE_MINUTES
from corpus_cache.engine.runtime import keeping_the_cache, keeping_warm
from corpus_cache.mcp_surface.server import build_server
from support.corpus_fixture import write_corpus
from support.emulator_control import FROZEN_AT, Control
from support.engines import engine_on

pytestmark = pytest.mark.anyio

QUESTIONS = ["Which port does Kestrel listen on?", "When are deploys frozen?"]
STEP = 20.0  # seconds the trace's clock moves at a time: less than the keep-warm margin (30 s)


class Servers:
    """`count` servers on one folder and state folder, each with its MCP client."""

    def __init__(self, emulator: Control, state: Path, clients: list[Client], pids: list[int]):
        self.emulator, self.state, self.clients, self.pids = emulator, state, clients, pids
        self.now = FROZEN_AT
        self.alive = set(range(len(clients)))

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.state / "ledger.sqlite3")

    def keeper_pid(self) -> int | None:
        with self.db() as db:
            row = db.execute("SELECT pid, expires FROM keepers").fetchone()
        return None if row is None else int(row[0])

    def heartbeats(self) -> dict[int, float]:
        with self.db() as db:
            return {
                int(pid): float(at)
                for pid, at in db.execute("SELECT pid, heartbeat FROM instances")
            }

    def last_touched(self) -> float:
        """When the last request that read or wrote the cache was sent."""
        with self.db() as db:
            (at,) = db.execute(
                "SELECT MAX(at) FROM requests WHERE outcome = 'ok' AND kind IN ('ask', 'keep-warm')"
            ).fetchone()
        return float(at)

    def believed_until(self) -> float:
        """The latest expiry of a cache entry the servers share through the state folder."""
        with self.db() as db:
            (expiry,) = db.execute("SELECT MAX(expiry) FROM shared_entries").fetchone()
        return float(expiry or 0.0)

    async def read_at(self, due: float) -> None:
        """Wait for the keep-warm read due at `due`: its row in the ledger, and the entry's
        new expiry taken in by the server that sent it (after its row is written: the
        clock must not move on before, or that server would believe the entry lapsed)."""
        await self.until(lambda: self.last_touched() >= due, "a keep-warm read")
        await self.until(lambda: self.believed_until() >= due + FIVE_MINUTES, "its effect")

    def keep_warm_rows(self) -> list[tuple[float, int, str]]:
        """(virtual seconds since the start, cache-read tokens, outcome) of each keep-warm."""
        with self.db() as db:
            rows = db.execute(
                "SELECT at, cache_read_tokens, outcome FROM requests WHERE kind = 'keep-warm' "
                "ORDER BY at, id"
            ).fetchall()
        return [(at - FROZEN_AT, read, outcome) for at, read, outcome in rows]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait, bounded, for `condition`: servers on a loaded machine take their time."""
        with anyio.move_on_after(30):
            while not condition():  # noqa: ASYNC110
                await anyio.sleep(0.02)
            return
        raise AssertionError(
            f"{what}: not within 30 s; at +{self.now - FROZEN_AT:g} s, keeper "
            f"{self.keeper_pid()}, heartbeats {self.heartbeats()}, alive "
            f"{[self.pids[i] for i in sorted(self.alive)]}, keep-warm {self.keep_warm_rows()}"
        )

    async def advance(self, seconds: float) -> None:
        """Move the virtual clock, then wait until no live server has a beat due (each beats
        every BEAT_SECONDS of it; its keep-warm loop wakes on the same poll of the clock)."""
        self.emulator.advance(seconds)
        self.now += seconds
        pids = {self.pids[i] for i in self.alive}
        due = self.now - BEAT_SECONDS
        await self.until(
            lambda: all(self.heartbeats().get(p, 0) > due for p in pids), "every server beats"
        )

    async def ask(self, index: int, question: str) -> dict[str, Any]:
        result = await self.clients[index].call_tool("ask", {"question": question})
        assert not result.is_error, result.content
        return result.structured_content  # type: ignore[return-value]

    async def status(self, index: int) -> dict[str, Any]:
        result = await self.clients[index].call_tool("cache_status", {})
        return result.structured_content  # type: ignore[return-value]


@asynccontextmanager
async def servers(
    count: int, base_url: str, emulator: Control, tmp_path: Path
) -> AsyncIterator[Servers]:
    emulator.freeze()
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env |= {
        "CORPUS_CACHE_STATE_DIR": str(state),
        "CORPUS_CACHE_CLOCK": "emulator",
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": base_url,
    }
    args = ["-m", "corpus_cache", "serve", "--corpus", str(corpus), "--no-watch", "--ttl", "5m"]
    clients: list[Client] = []
    stop = anyio.Event()

    async def serve() -> None:
        params = StdioServerParameters(command=sys.executable, args=args, env=env)
        async with Client(params) as client:
            clients.append(client)
            await stop.wait()

    # Started at once, as windows opened together are: each server imports for seconds.
    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(serve)
        try:
            with anyio.fail_after(60):
                while len(clients) < count:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            pids = [await pid_of(client) for client in clients]
            running = Servers(emulator, state, clients, pids)
            # Every server has registered, and one keeps the cache.
            await running.until(lambda: len(running.heartbeats()) == count, "all registered")
            await running.until(lambda: running.keeper_pid() in pids, "a keeper")
            yield running
        finally:
            stop.set()


async def pid_of(client: Client) -> int:
    """The server's pid, once its engine has started (it says so in cache_status)."""
    with anyio.fail_after(60):  # bounded: several servers importing at once on 2 cores
        while True:
            status = (await client.call_tool("cache_status", {})).structured_content
            if status is not None and status.get("sharing") is not None:
                return int(status["sharing"]["pid"])
            await anyio.sleep(0.05)


async def keep_warm_over_a_trace(running: Servers, asking: int) -> list[tuple[float, int, str]]:
    """Two questions 400 s apart through server `asking` (the policy then keeps the cache
    warm with a read 30 s before each expiry); then the clock moves to each keep-warm read
    as it falls due and waits for it (one missed fails the test, on a machine however
    slow), three times; then on, short of the next, for any other request to arrive.
    The keep-warm requests sent: (seconds since the start, cache-read tokens, outcome)."""
    await running.ask(asking, QUESTIONS[0])
    await running.advance(400)
    await running.ask(asking, QUESTIONS[1])
    for _ in range(3):
        due = running.last_touched() + FIVE_MINUTE_PING
        await running.advance(due - running.now)
        await running.read_at(due)
    await running.advance(FIVE_MINUTE_PING / 2)
    return running.keep_warm_rows()


async def handing_over(running: Servers, due: float) -> float:
    """Kill the keeper with SIGKILL 6 s before a keep-warm read is due; move the clock half
    a second at a time until another server holds the lease. How long that took."""
    keeper_pid = running.keeper_pid()
    assert keeper_pid is not None
    await running.advance(due - 6 - running.now)
    os.kill(keeper_pid, signal.SIGKILL)
    running.alive.discard(running.pids.index(keeper_pid))
    killed = running.now
    while running.keeper_pid() in (keeper_pid, None):
        await running.advance(0.5)
        assert running.now - killed <= 5.0, "no server took the lease over within 5 s"
    return running.now - killed


async def test_one_server_keeps_its_cache_warm_on_the_trace(
    running_emulator: Any, emulator: Control, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline: the same trace, one server (in this process, as `serve` runs its parts:
    the election, the keep-warm loop on the emulator's clock, a real MCP client)."""
    emulator.freeze()
    clock = EmulatorClock(running_emulator.base_url)
    corpus, state = write_corpus(tmp_path / "corpus"), tmp_path / "state"
    async with (
        engine_on(corpus, running_emulator.base_url, state, clock=clock.now, sleep=clock.sleep,
                  ttl="5m", watch=False) as engine,
        keeping_the_cache(engine),
        keeping_warm(engine, sleep=engine.sleep),
        Client(build_server(engine)) as client,
    ):  # fmt: skip
        alone = Servers(emulator, state, [client], [os.getpid()])
        assert await keep_warm_over_a_trace(alone, 0) == ONE_SERVERS_KEEP_WARM
    clock.close()


# What one server sends on that trace: a read at each due time, each finding the entry alive.
ONE_SERVERS_KEEP_WARM = [(670.0, 6874, "ok"), (940.0, 6874, "ok"), (1210.0, 6874, "ok")]


@pytest.mark.parametrize("count", [2, 4])
async def test_several_servers_send_a_single_servers_keep_warm_and_hand_over_within_five_seconds(
    running_emulator: Any, emulator: Control, tmp_path: Path, count: int
) -> None:
    """The trace of `test_one_server_keeps_its_cache_warm_on_the_trace`, its questions
    asked of a server that does not keep the cache, and the keeper killed with SIGKILL 6 s
    before the third keep-warm read is due: the same reads are sent, at the same times,
    each finding the entry alive; nothing else reaches the API."""
    async with servers(count, running_emulator.base_url, emulator, tmp_path) as running:
        keeper = running.pids.index(running.keeper_pid())  # type: ignore[arg-type]
        asking = (keeper + 1) % count
        await running.ask(asking, QUESTIONS[0])
        await running.advance(400)
        await running.ask(asking, QUESTIONS[1])
        before = (await running.status(asking))["sharing"]
        stats = await running.clients[asking].read_resource("corpus://stats")
        assert json.loads(stats.contents[0].text)["sharing"] == before  # type: ignore[union-attr]
        for ping in range(3):
            due = running.last_touched() + FIVE_MINUTE_PING
            if ping == 2:
                handed_over_in = await handing_over(running, due)
            await running.advance(due - running.now)
            await running.read_at(due)
        await running.advance(FIVE_MINUTE_PING / 2)
        pings = running.keep_warm_rows()
        successor = running.pids.index(running.keeper_pid())  # type: ignore[arg-type]
        after = (await running.status(successor))["sharing"]
    assert pings == ONE_SERVERS_KEEP_WARM
    counts = emulator.http.get("/_emulator/log").json()["counts"]
    assert counts["/v1/messages"] == 2 + len(ONE_SERVERS_KEEP_WARM)
    assert LEASE_SECONDS <= handed_over_in <= 5.0
    assert before["instances"] == count
    assert before["keeper_pid"] == running.pids[keeper]
    assert not before["this_instance_keeps"]
    assert (
        f"{count} servers share this cache; process {running.pids[keeper]} keeps it"
        in (before["text"])
    )
    assert after["this_instance_keeps"]
    assert after["instances"] == count - 1
