"""`corpus-cache serve` killed with SIGKILL while questions pour in over stdio: the ledger
it leaves opens cleanly, every time, and holds every question whose answer reached the
client. At most the questions in flight at the kill are missing.

The real server process (embedded emulator, real SQLite file in WAL mode), a real MCP
client with `WORKERS` questions always outstanding, a real SIGKILL at a random moment.
Rounds share one state folder: each server starts on the ledger the last one left.
`CORPUS_CACHE_KILL_ROUNDS` sets the number of rounds (`make reliability` runs 100) and
`CORPUS_CACHE_KILL_SEED` replays a run's random kill moments."""

from __future__ import annotations

import itertools
import os
import random
import shlex
import signal
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from mcp import Client, MCPError, StdioServerParameters

from corpus_cache.accounting.ledger import MIGRATIONS, Ledger
from support.corpus_fixture import write_corpus

pytestmark = pytest.mark.anyio

ROUNDS = int(os.environ.get("CORPUS_CACHE_KILL_ROUNDS", "3"))
SEED = int(os.environ.get("CORPUS_CACHE_KILL_SEED", str(random.randrange(2**32))))
WORKERS = 16  # questions outstanding at any moment
ASKING_WINDOW = 0.4  # seconds after the first answer in which the kill lands
STARTUP_KILLS = 0.1  # share of rounds killed while the server starts instead
DEADLINE = 60.0


@dataclass(frozen=True)
class Round:
    number: int
    during_startup: bool
    answered: int  # answers the client received
    recorded: int  # ask rows this server left in the ledger
    lost: int  # answered but not in the ledger: must be 0
    integrity: str  # PRAGMA integrity_check
    schema_intact: bool


def serve_command(corpus: Path, pidfile: Path, stderr: Path) -> list[str]:
    """The server, through a shell that records its pid and then becomes it; its log goes
    to `stderr`, so that a hundred rounds do not flood the test's output."""
    serve = [sys.executable, "-m", "corpus_cache", "serve", "--corpus", str(corpus)]
    script = (
        f"echo $$ > {shlex.quote(str(pidfile))}; "
        f"exec {shlex.join(serve)} 2>> {shlex.quote(str(stderr))}"
    )
    return ["sh", "-c", script]


def schema(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        return [tuple(row) for row in rows]


async def kill_while_asking(
    corpus: Path, state: Path, pidfile: Path, rng: random.Random, during_startup: bool
) -> set[str]:
    """Run the server, keep it asking, SIGKILL it; the message ids of the answers received."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["CORPUS_CACHE_STATE_DIR"] = str(state)
    command = serve_command(corpus, pidfile, state.parent / "server-stderr.log")
    params = StdioServerParameters(command=command[0], args=command[1:], env=env)
    answered: set[str] = set()
    first_answer = anyio.Event()

    async def ask(client: Client, worker: int) -> None:
        for number in itertools.count():
            question = f"When are deploys frozen? (worker {worker}, question {number})"
            try:
                result = await client.call_tool("ask", {"question": question})
            except MCPError:
                return  # the server is gone
            assert not result.is_error, result.content
            assert result.structured_content is not None
            answered.update(result.structured_content["message_ids"])
            first_answer.set()

    async def client_side() -> None:
        try:
            async with Client(params) as client, anyio.create_task_group() as group:
                for worker in range(WORKERS):
                    group.start_soon(ask, client, worker)
        except* MCPError:  # killed while the client was still connecting
            assert during_startup, "the connection failed before the kill"

    async def killer() -> None:
        if during_startup:
            pid = await pid_in(pidfile)
            await anyio.sleep(rng.uniform(0.0, 1.0))
        else:
            await first_answer.wait()
            await anyio.sleep(rng.uniform(0.0, ASKING_WINDOW))
            pid = await pid_in(pidfile)
        os.kill(pid, signal.SIGKILL)

    await anyio.Path(pidfile).unlink(missing_ok=True)
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as group:
            group.start_soon(client_side)
            group.start_soon(killer)
    return answered


async def pid_in(pidfile: Path) -> int:
    path = anyio.Path(pidfile)
    # A file a shell writes announces nothing: look for it until it is whole.
    while not (await path.exists() and (text := await path.read_text()).endswith("\n")):  # noqa: ASYNC110
        await anyio.sleep(0.005)
    return int(text)


def inspect(
    number: int,
    during_startup: bool,
    ledger_path: Path,
    answered: set[str],
    after_row: int,
    expected_schema: list[tuple[str, str, str]],
) -> tuple[Round, int]:
    """Open what the killed server left, with SQLite and with the product's Ledger. Rows
    after `after_row` are this round's (message ids restart with each emulator)."""
    with sqlite3.connect(ledger_path) as db:
        integrity = ", ".join(row[0] for row in db.execute("PRAGMA integrity_check"))
        (version,) = db.execute("PRAGMA user_version").fetchone()
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    intact = schema(ledger_path) == expected_schema and version == len(MIGRATIONS)
    assert mode == "wal"
    ledger = Ledger(ledger_path)
    try:
        rows = ledger.requests(limit=10_000_000)
        ledger.totals()  # the stats queries run on what is left
    finally:
        ledger.close()
    mine = {
        r.message_id for r in rows if r.id > after_row and r.kind == "ask" and r.outcome == "ok"
    }
    last_row = max((r.id for r in rows), default=after_row)
    return Round(
        number, during_startup, len(answered), len(mine), len(answered - mine),
        integrity, intact,
    ), last_row  # fmt: skip


async def test_a_server_killed_mid_write_leaves_a_ledger_that_opens_and_keeps_every_answer(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    ledger_path = state / "ledger.sqlite3"
    fresh = tmp_path / "fresh" / "ledger.sqlite3"
    Ledger(fresh).close()
    expected_schema = schema(fresh)

    rounds: list[Round] = []
    last_row = 0
    for number in range(ROUNDS):
        # An edit each round, so that each start also writes a token count.
        with (corpus / "deploys.md").open("a") as doc:
            doc.write(f"\nRound {number} of the kill test.\n")
        during_startup = number > 0 and rng.random() < STARTUP_KILLS
        answered = await kill_while_asking(
            corpus, state, tmp_path / "server.pid", rng, during_startup
        )
        if not ledger_path.exists():  # killed before the first server opened it
            assert not answered
            continue
        outcome, last_row = inspect(
            number, during_startup, ledger_path, answered, last_row, expected_schema
        )
        rounds.append(outcome)

    summary = (
        f"kill -9 (seed {SEED}): {len(rounds)} rounds ({sum(r.during_startup for r in rounds)} "
        f"during startup), {sum(r.answered for r in rounds)} answers received, "
        f"{sum(r.recorded for r in rounds)} ask rows written, in flight and recorded but "
        f"unanswered at most {max(r.recorded - r.answered + r.lost for r in rounds)} a round, "
        f"lost at most {max(r.lost for r in rounds)} a round, integrity failures "
        f"{sum(r.integrity != 'ok' for r in rounds)}, schema failures "
        f"{sum(not r.schema_intact for r in rounds)}"
    )
    print(summary)
    assert all(r.integrity == "ok" for r in rounds), summary
    assert all(r.schema_intact for r in rounds), summary
    assert all(r.lost == 0 for r in rounds), summary
    assert sum(r.answered for r in rounds) > 0, summary
