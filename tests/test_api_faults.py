"""Faults of the Messages API, injected through the emulator, on the whole path: a real MCP
client calls `ask` (or `refresh` with warm), the engine calls the real SDK over loopback,
and the emulator fails as told. What must hold for each fault: the caller retries what is
worth retrying; after that the tool says what happened and what to do; the server goes on
serving; every attempt has a row charging only what the API billed (test_billed_attempts.py
checks the ledger against what the emulator billed)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult

from corpus_cache.accounting.ledger import LedgerRow
from corpus_cache.emulator import RunningEmulator, start_in_thread
from corpus_cache.engine.core import Engine
from corpus_cache.engine.runtime import keeping_warm
from corpus_cache.engine.warm import next_ping_at
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.mcp_session import serving

pytestmark = pytest.mark.anyio

QUESTION = "When are deploys frozen?"
TOKEN_COLUMNS = (
    "input_tokens", "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
    "output_tokens",
)  # fmt: skip
MAY_BILL = "the API may bill a request it had begun to process"
ONE_ATTEMPT = {
    "429": "the Anthropic API is rate-limiting this key (429); try again in 0.01 s",
    "529": "the Anthropic API is overloaded (529); try again in a minute",
    "500": "the Anthropic API failed with an internal error (500): api_error (injected by "
    "the emulator); try again shortly",
}
HAD_BEGUN = "the response had begun"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """An API key, so a workspace, of the test's own: a slow request an earlier test left
    behind may still land in the emulator's log, but not among this test's requests."""
    return f"faults-{request.node.name}"


def text(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def to_messages(emulator: Control, key: str) -> list[dict[str, Any]]:
    """The Messages requests the emulator saw from the workspace of `key`, in order."""
    workspace = hashlib.sha256(key.encode()).hexdigest()[:16]
    return [
        entry
        for entry in emulator.log()
        if entry["path"] == "/v1/messages" and entry.get("workspace") == workspace
    ]


def rows(engine: Engine) -> list[dict[str, Any]]:
    """The ledger's requests, oldest first."""
    return list(reversed(engine.ledger.requests(engine.corpus_key)))


async def spend(mcp: Client) -> dict[str, Any]:
    status = await mcp.call_tool("cache_status", {})
    assert status.structured_content is not None
    out: dict[str, Any] = status.structured_content["spend"]
    return out


def assert_charges_nothing(row: LedgerRow) -> None:
    assert row.outcome == "error"
    assert [getattr(row, column) for column in TOKEN_COLUMNS] == [0] * len(TOKEN_COLUMNS)
    assert row.cost_usd == row.uncached_cost_usd == 0
    assert row.message_id is None


COUNTED = ("requests", "errors", "maybe_billed_requests", "maybe_billed_usd")


def assert_only_errors_added(
    before: dict[str, Any], after: dict[str, Any], errors: int, maybe: int = 0
) -> None:
    """The failures were counted, `maybe` of them as perhaps billed (an estimate kept apart),
    and nothing else moved: no tokens, no dollars billed."""
    assert after["requests"] == before["requests"] + errors
    assert after["errors"] == before["errors"] + errors
    assert after["maybe_billed_requests"] == before["maybe_billed_requests"] + maybe
    assert (after["maybe_billed_usd"] > before["maybe_billed_usd"]) == (maybe > 0)
    unchanged = {k: v for k, v in after.items() if k not in COUNTED}
    assert unchanged == {k: v for k, v in before.items() if k not in COUNTED}


async def ask_ok(mcp: Client, question: str = QUESTION, **arguments: Any) -> dict[str, Any]:
    result = await mcp.call_tool("ask", {"question": question, **arguments})
    assert not result.is_error, text(result)
    assert result.structured_content is not None
    return result.structured_content


def error_of(result: CallToolResult, tool: str) -> str:
    """The message of a tool's error result, which must be one: no traceback."""
    assert result.is_error, text(result)
    prefix = f"Error executing tool {tool}: "
    assert text(result).startswith(prefix), text(result)
    message = text(result).removeprefix(prefix)
    assert "Traceback" not in message
    return message


async def ask_fails(mcp: Client, question: str = QUESTION, **arguments: Any) -> str:
    return error_of(await mcp.call_tool("ask", {"question": question, **arguments}), "ask")


# --- error statuses: 429, 529, 500 -------------------------------------------------------

STATUS_FAULTS = [
    pytest.param(
        429, "rate_limit_error",
        "the Anthropic API is rate-limiting this key (429) after 2 attempts; try again in 0.01 s",
        id="429",
    ),
    pytest.param(
        529, "overloaded_error",
        "the Anthropic API is overloaded (529) after 2 attempts; try again in a minute",
        id="529",
    ),
    pytest.param(
        500, "api_error",
        "the Anthropic API failed with an internal error (500) after 2 attempts: api_error "
        "(injected by the emulator); try again shortly",
        id="500",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("status", "error_type", "expected"), STATUS_FAULTS)
async def test_an_error_status_is_retried_then_reported_and_charges_nothing(
    corpus: Path,
    running_emulator: RunningEmulator,
    emulator: Control,
    tmp_path: Path,
    key: str,
    status: int,
    error_type: str,
    expected: str,
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key, max_retries=1
    ) as (
        mcp,
        engine,
    ):
        # Transient: the SDK waits what retry-after says, asks again, and the answer arrives.
        emulator.fault(status=status, error_type=error_type, retry_after=0.01)
        await ask_ok(mcp)
        assert [e["status"] for e in to_messages(emulator, key)] == [status, 200]
        # Each attempt is a row: the refused one unbilled, the answered one billed.
        assert [(r.outcome, r.billing, r.attempt) for r in rows(engine)] == [
            ("error", "unbilled", 1), ("ok", "billed", 2),
        ]  # fmt: skip

        # Persistent: every attempt fails, and the tool says so, and what to do.
        before = await spend(mcp)
        emulator.fault(status=status, error_type=error_type, retry_after=0.01, count=2)
        assert await ask_fails(mcp) == expected
        assert [e["status"] for e in to_messages(emulator, key)][2:] == [status, status]
        for failed in rows(engine)[-2:]:
            assert_charges_nothing(failed)
            assert failed.billing == "unbilled"  # an error status: surely not billed, no hedge
            assert failed.error == ONE_ATTEMPT[str(status)]
        assert_only_errors_added(before, await spend(mcp), errors=2)

        # The server stays up: the next question on the same session is answered.
        await ask_ok(mcp)


# --- slow responses: the SDK's timeout, and the ask's deadline ----------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "says"),
    [
        (429, "rate_limit_error", "the Anthropic API was rate-limiting this key (429)"),
        (529, "overloaded_error", "the Anthropic API was overloaded (529)"),
    ],
)
async def test_a_deadline_passed_waiting_out_a_retry_after_says_so(
    corpus: Path, running_emulator: RunningEmulator, emulator: Control, tmp_path: Path, key: str,
    status: int, error_type: str, says: str,
) -> None:  # fmt: skip
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key,
        ask_deadline=0.5, max_retries=2,
    ) as (mcp, _):  # fmt: skip
        # The SDK waits what retry-after says before its next attempt: past the deadline.
        emulator.fault(status=status, error_type=error_type, retry_after=3, count=1)
        message = await ask_fails(mcp)
        wait = "and asked to wait 3 s before the next attempt"
        again = "ask again after that" if status == 429 else "ask again in a minute"
        assert message == f"no answer within 0.5 s; {says} {wait}; {again}"
        # Without a throttle, the deadline's usual advice.
        emulator.fault(kind="delay", delay=1.5)
        assert "the server reads its response to the end" in await ask_fails(mcp)


# --- connection refused -------------------------------------------------------------------


@contextmanager
def caller_retrying() -> Iterator[anyio.Event]:
    """An event set when the API caller logs that it will try a request again."""
    retrying = anyio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "trying again" in record.getMessage():
                retrying.set()

    logger = logging.getLogger("corpus_cache.api.caller")
    handler, level = Seen(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield retrying
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@asynccontextmanager
async def private_emulator() -> AsyncIterator[list[RunningEmulator]]:
    """An emulator of this test's own, which it may stop and start again on the same port;
    the list holds the one running (empty while stopped)."""
    running = [start_in_thread()]
    try:
        yield running
    finally:
        for emulator in running:
            emulator.stop()


async def test_a_refused_connection_is_retried_then_reported_and_charges_nothing(
    corpus: Path, tmp_path: Path
) -> None:
    async with private_emulator() as running:
        base_url = running[0].base_url
        port = int(base_url.rsplit(":", 1)[1])
        # As many retries as in production: room for the API to come back in the waits.
        async with serving(corpus, base_url, tmp_path / "s", max_retries=2) as (
            mcp,
            engine,
        ):
            before = await spend(mcp)
            running.pop().stop()  # nothing listens on the port now: connections are refused

            # Transient: the API comes back while the caller waits to retry.
            with caller_retrying() as retrying:
                async with anyio.create_task_group() as group:
                    answered: list[dict[str, Any]] = []

                    async def ask() -> None:
                        answered.append(await ask_ok(mcp))

                    group.start_soon(ask)
                    with anyio.fail_after(5):
                        await retrying.wait()
                    running.append(start_in_thread(port=port))
            assert answered
            *refused, answer = rows(engine)
            assert answer.outcome == "ok"
            assert refused
            assert all(r.billing == "unbilled" for r in refused)
            after_ok = await spend(mcp)

            # Persistent: every attempt is refused.
            running.pop().stop()
            message = await ask_fails(mcp)
            assert message == (
                f"cannot reach the Anthropic API at 127.0.0.1:{port} after 3 attempts "
                "(All connection attempts failed); check the network connection and "
                "ANTHROPIC_BASE_URL"
            )
            for failed in rows(engine)[-3:]:
                assert_charges_nothing(failed)
                assert failed.billing == "unbilled"  # never connected: surely not billed
                assert failed.error == message.replace(" after 3 attempts", "")
            assert_only_errors_added(after_ok, await spend(mcp), errors=3)
            assert after_ok["spent_usd"] > before["spent_usd"]

            # The server stays up: once the API is back, the next question is answered.
            running.append(start_in_thread(port=port))
            await ask_ok(mcp)


# --- malformed and broken responses -------------------------------------------------------


async def test_a_malformed_response_is_reported_not_retried_and_charges_nothing(
    corpus: Path, running_emulator: RunningEmulator, emulator: Control, tmp_path: Path, key: str
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key, max_retries=2
    ) as (
        mcp,
        engine,
    ):
        before = await spend(mcp)
        emulator.fault(kind="malformed")  # a 200 whose body is cut-off JSON, not a stream
        message = await ask_fails(mcp)
        assert message == (
            "the Anthropic API's response ended before the answer was complete; ask again"
        )
        # A 200 is not retried: the API may have billed it, and a retry would pay again.
        assert [e.get("malformed") for e in to_messages(emulator, key)] == [True]
        (failed,) = rows(engine)
        assert_charges_nothing(failed)
        assert failed.billing == "maybe"
        assert failed.estimate_usd is not None
        assert failed.estimate_usd > 0
        assert MAY_BILL in failed.error
        assert_only_errors_added(before, await spend(mcp), errors=1, maybe=1)
        await ask_ok(mcp)


# The emulator stops half-way through the text of its answer.
CUT = r"\(after [1-9][0-9,]* characters of the answer\); ask again$"
BROKEN_STREAMS = [
    pytest.param(
        "end", r"^the Anthropic API's response ended before the answer was complete " + CUT,
        id="truncated-end",
    ),
    pytest.param(
        "drop", r"^the connection to the Anthropic API broke while the answer was arriving " + CUT,
        id="truncated-drop",
    ),
    pytest.param(
        "error",
        r"^the Anthropic API is overloaded \(overloaded_error, in the middle of the answer\); "
        r"try again in a minute$",
        id="truncated-error",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("ending", "expected"), BROKEN_STREAMS)
async def test_a_stream_broken_mid_answer_is_an_error_not_a_partial_answer(
    corpus: Path,
    running_emulator: RunningEmulator,
    emulator: Control,
    tmp_path: Path,
    key: str,
    ending: str,
    expected: str,
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key, max_retries=2
    ) as (
        mcp,
        engine,
    ):
        emulator.fault(kind="truncated", ending=ending)
        message = await ask_fails(mcp, session="faults")
        assert re.search(expected, message), message
        (broken,) = rows(engine)  # recorded once, and as an error: no partial "ok" answer
        (billed,) = to_messages(emulator, key)  # not retried: the response had begun
        assert billed["truncated"] == ending
        assert broken.outcome == "error"
        assert broken.billing == "billed"
        assert broken.message_id == billed["id"]  # message_start carried it
        assert broken.error.startswith(message.removesuffix("; ask again"))
        assert HAD_BEGUN in broken.error
        assert broken.input_tokens == billed["usage"]["input_tokens"]
        assert broken.cost_usd > 0  # the API bills a response once it has begun

        # The conversation did not keep the broken answer as a turn.
        answer = await ask_ok(mcp, session="faults")
        assert answer["session_turns"] == 1


# --- warming: the refresh tool and the keep-warm loop ------------------------------------

WARM_FAULTS = [
    pytest.param(
        {"status": 529, "error_type": "overloaded_error", "retry_after": 0.01, "count": 2},
        "warming the cache failed: the Anthropic API is overloaded (529) after 2 attempts; "
        "try again in a minute", 2,
        id="warm-529",
    ),
    pytest.param(
        {"kind": "malformed"},
        "warming the cache failed: the Anthropic API's response could not be read (not JSON: "
        "Unterminated string starting at); ask again", 1,
        id="warm-malformed",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("fault", "expected", "attempts"), WARM_FAULTS)
async def test_a_failed_warm_is_reported_and_charges_nothing(
    corpus: Path,
    running_emulator: RunningEmulator,
    emulator: Control,
    tmp_path: Path,
    key: str,
    fault: dict[str, Any],
    expected: str,
    attempts: int,
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key, max_retries=1
    ) as (
        mcp,
        engine,
    ):
        before = await spend(mcp)
        emulator.fault(**fault)
        result = await mcp.call_tool("refresh", {"warm": True})
        assert error_of(result, "refresh") == expected
        failed = rows(engine)
        assert len(failed) == attempts
        for row in failed:
            assert row.kind == "warm"
            assert_charges_nothing(row)
            said = expected.removeprefix("warming the cache failed: ")
            assert row.error.startswith(said.replace(f" after {attempts} attempts", ""))
        maybe = sum(row.billing == "maybe" for row in failed)  # a garbled 200 may be billed
        assert_only_errors_added(before, await spend(mcp), errors=attempts, maybe=maybe)

        warmed = await mcp.call_tool("refresh", {"warm": True})  # the server stays up
        assert not warmed.is_error, text(warmed)
        assert [r.outcome for r in rows(engine)] == ["error"] * attempts + ["ok"]


async def test_a_transient_fault_while_warming_is_retried(
    corpus: Path, running_emulator: RunningEmulator, emulator: Control, tmp_path: Path, key: str
) -> None:
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key, max_retries=1
    ) as (
        mcp,
        engine,
    ):
        emulator.fault(status=529, error_type="overloaded_error", retry_after=0.01)
        warmed = await mcp.call_tool("refresh", {"warm": True})
        assert not warmed.is_error, text(warmed)
        assert [e["status"] for e in to_messages(emulator, key)] == [529, 200]
        assert [(r.kind, r.outcome, r.billing) for r in rows(engine)] == [
            ("warm", "error", "unbilled"), ("warm", "ok", "billed"),
        ]  # fmt: skip


async def test_a_failed_keep_warm_request_is_logged_recorded_and_the_loop_goes_on(
    corpus: Path,
    running_emulator: RunningEmulator,
    emulator: Control,
    tmp_path: Path,
    key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1_800_000_000.0]
    emulator.freeze(now[0])

    def advance(seconds: float) -> None:
        now[0] += seconds
        emulator.advance(seconds)

    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", api_key=key,
        max_retries=1, ttl="5m", clock=lambda: now[0],
    ) as (mcp, engine):  # fmt: skip
        await ask_ok(mcp)
        advance(400)  # questions 400 s apart: one keep-warm read beats a rewrite
        await ask_ok(mcp)
        due = next_ping_at(engine)
        assert due is not None
        advance(due - now[0] + 1)

        emulator.fault(status=529, error_type="overloaded_error", retry_after=0.01, count=2)
        with caplog.at_level(logging.WARNING, logger="corpus_cache.engine.runtime"):
            async with keeping_warm(engine, check_every=0.05):
                # The loop runs on its own; what it leaves in the ledger is what is tested.
                with anyio.fail_after(5):
                    while [r.kind for r in rows(engine)].count("keep-warm") < 3:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
        pings = [r for r in rows(engine) if r.kind == "keep-warm"]
        assert [r.outcome for r in pings] == ["error", "error", "ok"]  # two attempts, then one
        for failed in pings[:2]:
            assert_charges_nothing(failed)
            assert "overloaded (529); try again" in failed.error
        assert pings[2].cache_read_tokens > 0
        # The ping refreshed the entry: the next one is due as it nears expiry, not at once.
        following = next_ping_at(engine)
        assert following is None or following >= now[0] + 240
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            "keep-warm failed, trying again in 0.05 s: warming the cache failed: the Anthropic "
            "API is overloaded (529) after 2 attempts; try again in a minute"
        ]
        await ask_ok(mcp)  # and the server still answers
