"""Which Messages API the product talks to: Anthropic's, or the built-in emulator.

With ANTHROPIC_API_KEY set (and not --offline) the SDK reads its key and ANTHROPIC_BASE_URL
as it always does. Without a key, an emulator starts in-process on a free loopback port.
Either way the product's code path is the same: the SDK over HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx2
from anthropic import AsyncAnthropic

from corpus_cache.api import local_emulator
from corpus_cache.api.retrying import Failure
from corpus_cache.api.throttles import note_throttle
from corpus_cache.config import answers_offline
from corpus_cache.emulator import RunningEmulator, start_in_thread
from corpus_cache.errors import IncompleteResponseError, SetupError
from corpus_cache.models.catalog import Catalog

log = logging.getLogger(__name__)

EMULATOR_HEADER = "x-corpus-cache-emulator"
ANTHROPIC = "anthropic"
OFFLINE_EMULATOR = "offline-emulator"

# Retries after a 408, 409, 429, 5xx or a connection failure, so up to 3 attempts: made by
# the one caller (api/retrying.py decides), so that each attempt is a ledger row. The SDK's
# client makes one attempt per Messages call; count_tokens, which is free, keeps the SDK's
# retries (`Backend.counting`).
API_RETRIES = 2
# How long a request waits for its response to begin, whatever the request timeout: until
# it has begun, the API may be running it, and giving up early would leave a billed request
# with no usage known (and its retry would write the cache again). The ask's deadline ends
# the answer sooner; the engine reads the response in the background (engine/core.py).
RESPONSE_BEGIN_SECONDS = 600.0


# What a Messages API call can fail with: the SDK's errors, and, once a response streams,
# a connection that breaks, a body that is not JSON, and a stream that stops early.
API_FAILURES: tuple[type[Exception], ...] = (
    anthropic.APIError,
    httpx2.TransportError,
    json.JSONDecodeError,
    IncompleteResponseError,
)


@dataclass
class Backend:
    client: AsyncAnthropic  # one attempt per call (max_retries=0): the caller retries
    kind: str
    emulator: RunningEmulator | None = None
    # The process whose memory holds an offline backend's cache (this one, for an emulator in
    # a thread), recorded with each answer: its cache dies with that process.
    emulator_pid: int | None = None
    retries: int = API_RETRIES  # attempts after the first, made by the caller
    # Seconds to connect, and the longest silence in a response that has begun.
    request_timeout: float = 50.0

    @property
    def counting(self) -> AsyncAnthropic:
        """The client for count_tokens: free, so the SDK's own retries are kept there."""
        return self.client.with_options(max_retries=self.retries)

    def timeout(self) -> httpx2.Timeout:
        """A Messages request's: connecting and sending within the request timeout, and up
        to RESPONSE_BEGIN_SECONDS for its response to begin."""
        wait = max(self.request_timeout, RESPONSE_BEGIN_SECONDS)
        return httpx2.Timeout(wait, connect=self.request_timeout, write=self.request_timeout)

    async def close(self) -> None:
        await self.client.close()
        if self.emulator is not None:
            self.emulator.stop()


def open_backend(
    catalog: Catalog,
    *,
    offline: bool,
    timeout: float,
    keep_between: Path | None = None,
    models_file: Path | None = None,
    tier: str | None = None,
    limits_file: Path | None = None,
) -> Backend:
    """`keep_between`: the state folder of a local emulator that outlives this process
    (local_emulator.py), for commands that end after one question; else, offline, an
    emulator in this process, whose cache ends with it, and which applies the rate limits
    of `tier` (from the shipped table with `limits_file` merged in), if one is given."""
    if not answers_offline(offline):
        client = api_client(timeout=timeout, max_retries=0)
        return Backend(client, ANTHROPIC, request_timeout=timeout)
    if keep_between is not None:
        try:
            local = local_emulator.connect(keep_between, models_file)
        except (SetupError, OSError) as exc:
            log.warning("%s: this ask's cache ends with it (`corpus-cache serve` keeps one)", exc)
        else:
            log.warning(
                "no ANTHROPIC_API_KEY%s: answering with the offline emulator at %s (extractive "
                "answers, not Claude), kept running between asks so that the next one reads "
                "this one's cache; it stops after an hour unused (pid %d)",
                " used (--offline)" if offline else "", local.base_url, local.pid,
            )  # fmt: skip
            client = api_client(
                base_url=local.base_url, api_key=local.api_key, timeout=timeout, max_retries=0
            )
            return Backend(
                client, OFFLINE_EMULATOR, emulator_pid=local.pid, request_timeout=timeout
            )
    # A key only this process knows, and no controls: other local programs, and web pages
    # that reach loopback, can neither read what was sent nor steer the answers.
    key = secrets.token_urlsafe(32)
    emulator = start_in_thread(
        catalog=catalog, api_key=key, controls=False, tier=tier, limits_file=limits_file
    )
    log.warning(
        "no ANTHROPIC_API_KEY%s: answering with the offline emulator at %s "
        "(extractive answers, not Claude)",
        " used (--offline)" if offline else "",
        emulator.base_url,
    )
    client = api_client(base_url=emulator.base_url, api_key=key, timeout=timeout, max_retries=0)
    return Backend(client, OFFLINE_EMULATOR, emulator, os.getpid(), request_timeout=timeout)


def api_client(**options: Any) -> AsyncAnthropic:
    """The SDK's client (`options` as AsyncAnthropic takes them), noting every time the API
    asks to wait (see `throttles.noting_throttles`)."""
    hooks = {"response": [note_throttle]}
    return AsyncAnthropic(
        http_client=anthropic.DefaultAsyncHttpxClient(event_hooks=hooks), **options
    )


def backend_of_response(headers: object, default: str) -> str:
    """An answer is labelled by the server that actually produced it."""
    get = getattr(headers, "get", None)
    if get is not None and get(EMULATOR_HEADER):
        return OFFLINE_EMULATOR
    return default


def describe_api_error(
    exc: BaseException, *, received: int | None = None, attempts: int | None = None
) -> str:
    """What went wrong with a Messages API call and what to do, for the user; says how many
    attempts were made when there were several (`attempts`; else as the SDK counted them).

    `received` is how many characters of the answer had arrived when the response had begun
    (its `message_start` was read), None when it had not. A failure after that start is a
    broken answer, whatever the HTTP library and the SDK call the exception: they wrap and
    reword transport errors from one release to the next, so the state decides, not the text.
    """
    if received is not None:
        broken = _describe_broken_answer(exc, received)
        if broken is not None:
            return broken
    tries = _attempts(exc, attempts)
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return (
            f"the Anthropic API did not answer in time{tries}; try again shortly, or allow "
            "longer with CORPUS_CACHE_REQUEST_TIMEOUT"
        )
    if isinstance(exc, anthropic.APIConnectionError) and not _connected(exc):
        host = f"{exc.request.url.host}:{exc.request.url.port}"
        cause = f" ({exc.__cause__})" if exc.__cause__ and str(exc.__cause__) else ""
        return (
            f"cannot reach the Anthropic API at {host}{tries}{cause}; check the network "
            "connection and ANTHROPIC_BASE_URL"
        )
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        return (
            "the connection to the Anthropic API broke after the request was sent, before "
            f"its answer began{tries}; ask again"
        )
    if isinstance(exc, anthropic.APIStatusError):
        return _describe_status(exc, tries)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return "the Anthropic API's response was not in the shape expected; ask again"
    if isinstance(exc, json.JSONDecodeError):
        return f"the Anthropic API's response could not be read (not JSON: {exc.msg}); ask again"
    if isinstance(exc, IncompleteResponseError):
        return "the Anthropic API's response ended before the answer was complete; ask again"
    return f"the Anthropic API call failed: {exc}"


def _describe_broken_answer(exc: BaseException, received: int) -> str | None:
    """A response that had begun and did not end: why, by the exception's kind. None for an
    error the API itself reported in the stream (an `error` event), described as a status."""
    after = f"after {received:,} characters of the answer"
    if isinstance(exc, IncompleteResponseError):
        return (
            f"the Anthropic API's response ended before the answer was complete ({after}); "
            "ask again"
        )
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return f"the Anthropic API stopped sending in the middle of the answer ({after}); ask again"
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        broke = "the connection to the Anthropic API broke while the answer was arriving"
        return f"{broke} ({after}); ask again"
    return None


def _connected(exc: anthropic.APIConnectionError) -> bool:
    """Whether the request got as far as a connection (so it may have been sent)."""
    if isinstance(exc, anthropic.APITimeoutError):
        return not isinstance(exc.__cause__, httpx2.ConnectTimeout)
    return not isinstance(exc.__cause__, httpx2.ConnectError | httpx2.ConnectTimeout)


def failure_of(exc: BaseException, *, began: bool, writes_cache: bool) -> Failure:
    """What failed, as the retry decision (api/retrying.py) and the ledger see it. `began`:
    the response had begun (its message_start, or its body, had arrived)."""
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code >= 400:
        headers = dict(exc.response.headers.items())
        return Failure("refused", exc.status_code, headers, writes_cache)
    if began:
        return Failure("broken", writes_cache=writes_cache)
    if isinstance(exc, anthropic.APIConnectionError) and not _connected(exc):
        return Failure("unreached", writes_cache=writes_cache)
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError | TimeoutError):
        return Failure("unanswered", writes_cache=writes_cache)
    return Failure("garbled", writes_cache=writes_cache)  # a 200 that could not be read


def _attempts(exc: BaseException, attempts: int | None) -> str:
    if attempts is None and isinstance(exc, anthropic.APIError):
        try:  # the SDK's own retries (count_tokens)
            attempts = int(exc.request.headers.get("x-stainless-retry-count", "0")) + 1
        except ValueError:
            return ""
    return f" after {attempts} attempts" if attempts and attempts > 1 else ""


def _describe_status(exc: anthropic.APIStatusError, tries: str) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    found = body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    kind = error.get("type")
    detail = error.get("message") or str(exc)
    status = exc.status_code
    # A 200 whose stream carried an error event: the API failed after it began answering.
    code = f"{status}" if status >= 400 else f"{kind}, in the middle of the answer"
    if status == 529 or kind == "overloaded_error":
        return f"the Anthropic API is overloaded ({code}){tries}; try again in a minute"
    if status == 429 or kind == "rate_limit_error":
        wait = exc.response.headers.get("retry-after")
        when = f"in {wait} s" if wait else "shortly"
        return f"the Anthropic API is rate-limiting this key ({code}){tries}; try again {when}"
    if status == 401 or kind == "authentication_error":
        return "the Anthropic API refused the API key: check ANTHROPIC_API_KEY"
    if status >= 500 or status < 400:
        return (
            f"the Anthropic API failed with an internal error ({code}){tries}: {detail}; "
            "try again shortly"
        )
    return f"the Anthropic API answered {status}: {detail}"
