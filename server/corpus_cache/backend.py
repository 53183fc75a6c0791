"""Which Messages API the product talks to: Anthropic's, or the built-in emulator.

With ANTHROPIC_API_KEY set (and not --offline) the SDK reads its key and ANTHROPIC_BASE_URL
as it always does. Without a key, an emulator starts in-process on a free loopback port.
Either way the product's code path is the same: the SDK over HTTP.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import anthropic
from anthropic import AsyncAnthropic

from .catalog import Catalog
from .emulator import RunningEmulator, start_in_thread

log = logging.getLogger(__name__)

EMULATOR_HEADER = "x-corpus-cache-emulator"
ANTHROPIC = "anthropic"
OFFLINE_EMULATOR = "offline-emulator"


@dataclass
class Backend:
    client: AsyncAnthropic
    kind: str
    emulator: RunningEmulator | None = None

    async def close(self) -> None:
        await self.client.close()
        if self.emulator is not None:
            self.emulator.stop()


def open_backend(catalog: Catalog, *, offline: bool, timeout: float) -> Backend:
    if not offline and os.environ.get("ANTHROPIC_API_KEY"):
        return Backend(AsyncAnthropic(timeout=timeout), ANTHROPIC)
    emulator = start_in_thread(catalog=catalog)
    log.warning(
        "no ANTHROPIC_API_KEY%s: answering with the offline emulator at %s "
        "(extractive answers, not Claude)",
        " used (--offline)" if offline else "",
        emulator.base_url,
    )
    client = AsyncAnthropic(base_url=emulator.base_url, api_key="offline-emulator", timeout=timeout)
    return Backend(client, OFFLINE_EMULATOR, emulator)


def backend_of_response(headers: object, default: str) -> str:
    """An answer is labelled by the server that actually produced it."""
    get = getattr(headers, "get", None)
    if get is not None and get(EMULATOR_HEADER):
        return OFFLINE_EMULATOR
    return default


def describe_api_error(exc: anthropic.APIError) -> str:
    if isinstance(exc, anthropic.APITimeoutError):
        return "the Anthropic API did not answer in time (after retries); try again shortly"
    if isinstance(exc, anthropic.APIConnectionError):
        return f"cannot reach the Anthropic API: {exc}"
    if isinstance(exc, anthropic.AuthenticationError):
        return "the Anthropic API refused the API key: check ANTHROPIC_API_KEY"
    if isinstance(exc, anthropic.RateLimitError):
        return "the Anthropic API is rate-limiting this key (after retries); try again shortly"
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("error", {}).get("message", str(exc)) if body else str(exc)
        return f"the Anthropic API answered {exc.status_code}: {detail}"
    return f"the Anthropic API call failed: {exc}"
