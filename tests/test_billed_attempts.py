"""Every attempt the API may bill is in the ledger (issue 19): the ledger's dollars against
what the emulator says it billed (`billed` in its request log), on the paths where a
request does not simply finish: a response slower than the request timeout, an ask's
deadline on a cold write, a shard of a fan-out failing while its siblings run, a stream cut
by each ending, and the server stopping with responses under way. Each runs through a real
MCP client, the engine, the SDK over loopback and the emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from corpus_cache.accounting.ledger import Ledger, LedgerRow
from corpus_cache.config import Settings
from corpus_cache.emulator import RunningEmulator
from corpus_cache.engine.core import Engine
from support.emulator_control import Control
from support.mcp_session import serving
from test_api_faults import ask_fails, ask_ok, corpus, key, rows, to_messages

pytestmark = pytest.mark.anyio

__all__ = ["corpus", "key"]  # fixtures, shared with test_api_faults


def billed(emulator: Control, key: str) -> list[dict[str, Any]]:
    """What the emulator billed each Messages request of `key` (none for refused ones)."""
    return [e["billed"] for e in to_messages(emulator, key) if "billed" in e]


def emulator_usd(emulator: Control, key: str) -> float:
    return sum(b["usd"] for b in billed(emulator, key))


def ledger_usd(engine: Engine) -> float:
    return sum(r.cost_usd for r in rows(engine))


def cache_writes(emulator: Control, key: str) -> int:
    """How many requests the emulator billed a cache write."""
    return sum(b["usage"]["cache_creation_input_tokens"] > 0 for b in billed(emulator, key))


async def until_rows(engine: Engine, count: int) -> list[LedgerRow]:
    """The ledger's rows once it holds `count` (responses read in the background land late)."""
    with anyio.fail_after(10):
        while len(found := rows(engine)) < count:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return found


def assert_ledger_is_the_bill(engine: Engine, emulator: Control, key: str) -> None:
    assert ledger_usd(engine) == pytest.approx(emulator_usd(emulator, key), rel=1e-9, abs=1e-9)
    assert ledger_usd(engine) > 0


# --- a response slower than the request timeout ------------------------------------------


async def test_a_cold_question_slower_than_the_request_timeout_is_waited_for_and_written_once(
    corpus: Path, running_emulator: RunningEmulator, emulator: Control, tmp_path: Path, key: str
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key,
        max_retries=2, request_timeout=0.3, ask_deadline=10,
    ) as (mcp, engine):  # fmt: skip
        emulator.fault(kind="delay", delay=1.0)  # the response begins after the timeout
        answer = await ask_ok(mcp)
        assert answer["usage"]["cache_write_5m_tokens"] > 0
        (row,) = rows(engine)  # no abandoned attempt, no retry
        (sent,) = to_messages(emulator, key)
        assert row.message_id == sent["id"]
        assert cache_writes(emulator, key) == 1  # the cold prefix was written once
        assert_ledger_is_the_bill(engine, emulator, key)


async def test_a_warm_request_slower_than_the_request_timeout_is_waited_for_and_written_once(
    corpus: Path, running_emulator: RunningEmulator, emulator: Control, tmp_path: Path, key: str
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key,
        max_retries=2, request_timeout=0.3,
    ) as (mcp, engine):  # fmt: skip
        emulator.fault(kind="delay", delay=1.0)
        warmed = await mcp.call_tool("refresh", {"warm": True})
        assert not warmed.is_error
        (row,) = rows(engine)
        assert (row.kind, row.outcome, row.billing) == ("warm", "ok", "billed")
        assert cache_writes(emulator, key) == 1
        assert_ledger_is_the_bill(engine, emulator, key)


async def test_a_stream_that_stalls_longer_than_the_request_timeout_is_broken_and_billed(
    corpus: Path, running_emulator: RunningEmulator, emulator: Control, tmp_path: Path, key: str
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key,
        max_retries=2, request_timeout=0.3,
    ) as (mcp, engine):  # fmt: skip
        emulator.fault(kind="truncated", delay=2.0)  # half-way, then silence
        message = await ask_fails(mcp)
        assert message.startswith("the Anthropic API stopped sending in the middle of the answer")
        (row,) = rows(engine)  # a response that began is never sent again
        assert row.billing == "billed"
        assert_ledger_is_the_bill(engine, emulator, key)


# --- the ask's deadline ---------------------------------------------------------------------


async def test_a_deadline_on_a_cold_write_leaves_it_read_to_the_end_and_the_next_question_reads_it(
    corpus: Path, running_emulator: RunningEmulator, emulator: Control, tmp_path: Path, key: str
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key, ask_deadline=0.5
    ) as (mcp, engine):
        emulator.fault(kind="delay", delay=2.0)
        message = await ask_fails(mcp)
        assert message.startswith("no answer within 0.5 s; ")
        assert "reads its response to the end in the background" in message
        assert "Ask again in a few seconds" in message

        # Asked again at once: it waits for the first response to begin, then reads it.
        engine.settings.ask_deadline = 10
        again = await ask_ok(mcp)
        assert again["usage"]["cache_read_tokens"] > 0
        assert again["usage"]["cache_write_5m_tokens"] == 0
        first, second = await until_rows(engine, 2)
        assert {first.outcome, second.outcome} == {"ok"}
        written = first.cache_write_5m_tokens + second.cache_write_5m_tokens
        assert written == again["usage"]["cache_read_tokens"]  # what it reads, the ledger wrote
        assert cache_writes(emulator, key) == 1
        assert_ledger_is_the_bill(engine, emulator, key)
        assert engine.read_for_no_one == 0


# --- a fan-out whose one shard fails ------------------------------------------------------


async def test_siblings_of_a_failed_shard_are_read_to_the_end_and_billed(
    corpus: Path, running_emulator: RunningEmulator, emulator: Control, tmp_path: Path, key: str
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key, budget_tokens=2_500
    ) as (mcp, engine):
        shards = len(engine.current.shards)
        assert shards >= 3
        emulator.fault(status=400, error_type="invalid_request_error", message="no such thing")
        emulator.fault(kind="delay", delay=1.0, count=shards)  # the siblings are still running
        message = await ask_fails(mcp, question="deploys on-call reviews", fan_out=3)
        assert message == "the Anthropic API answered 400: no such thing"
        refused, *siblings = sorted(await until_rows(engine, 3), key=lambda r: r.outcome)
        assert (refused.outcome, refused.billing) == ("error", "unbilled")
        assert [(r.outcome, r.billing) for r in siblings] == [("ok", "billed")] * 2
        assert all("deadline" not in (r.error or "") for r in siblings)
        assert_ledger_is_the_bill(engine, emulator, key)


# --- streams cut by each ending ---------------------------------------------------------------

ENDINGS = [
    ("end", "the Anthropic API's response ended before the answer was complete (after "),
    ("drop", "the connection to the Anthropic API broke while the answer was arriving (after "),
    ("error", "the Anthropic API is overloaded (overloaded_error, in the middle of the answer)"),
]


@pytest.mark.parametrize(("ending", "says"), ENDINGS, ids=[e for e, _ in ENDINGS])
async def test_a_cut_stream_records_its_message_id_and_what_was_billed(
    corpus: Path,
    running_emulator: RunningEmulator,
    emulator: Control,
    tmp_path: Path,
    key: str,
    ending: str,
    says: str,
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key, max_retries=2
    ) as (mcp, engine):
        emulator.fault(kind="truncated", ending=ending)
        message = await ask_fails(mcp)
        assert message.startswith(says)
        assert "cannot reach" not in message
        (row,) = rows(engine)
        (sent,) = to_messages(emulator, key)
        assert row.message_id == sent["id"]
        assert row.error is not None
        assert row.error.startswith(says)
        assert (row.outcome, row.billing) == ("error", "billed")
        assert_ledger_is_the_bill(engine, emulator, key)


# --- stopping with responses under way ----------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "billing"),
    [({"kind": "delay", "delay": 2.5}, "maybe"), ({"kind": "truncated", "delay": 2.5}, "billed")],
    ids=["before-it-began", "after-it-began"],
)
async def test_stopping_the_server_ends_a_response_read_in_the_background_at_once_and_records_it(
    corpus: Path,
    running_emulator: RunningEmulator,
    emulator: Control,
    tmp_path: Path,
    key: str,
    fault: dict[str, Any],
    billing: str,
) -> None:
    with anyio.fail_after(2):  # well before the response would end
        async with serving(
            corpus, running_emulator.base_url, tmp_path / "s", api_key=key, ask_deadline=0.5
        ) as (mcp, engine):
            emulator.fault(**fault)
            await ask_fails(mcp)
            assert engine.read_for_no_one == 1
    # The emulator goes on with the request, as the API would, and logs it when it begins:
    # waited for here, so that it lands in no later test's log.
    with anyio.fail_after(5):
        while not to_messages(emulator, key):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    ledger = Ledger(Settings(corpus=corpus, state_dir=tmp_path / "s").ledger_path)
    try:
        (row,) = ledger.requests()
    finally:
        ledger.close()
    assert (row.outcome, row.billing) == ("error", billing)
    assert row.error is not None
    assert "(the server stopped before the response ended)" in row.error
    if billing == "maybe":
        assert row.cost_usd == 0
        assert row.estimate_usd is not None
        assert row.estimate_usd > 0  # what its cold write would cost
    else:
        assert row.cost_usd > 0  # what its start reported
        assert row.message_id is not None
