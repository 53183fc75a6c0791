"""The API asking to wait (a 429 or a 529, with its retry-after), noted per task: why a
deadline passed, in words. Light (no SDK): the MCP surface imports it before the engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx2


@dataclass(frozen=True)
class Throttle:
    """A 429 or 529 the API answered, with the wait its retry-after asked for."""

    status: int
    retry_after: str | None


_throttles: ContextVar[list[Throttle] | None] = ContextVar("corpus_cache_throttles", default=None)


@contextmanager
def noting_throttles() -> Iterator[list[Throttle]]:
    """Within it, each 429 and 529 the API answers to this task's calls, the caller's retries
    included, is added to the list it gives. The caller waits out a retry-after before asking
    again, and a deadline may end that wait: then the list says why the answer is late."""
    noted: list[Throttle] = []
    token = _throttles.set(noted)
    try:
        yield noted
    finally:
        _throttles.reset(token)


async def note_throttle(response: httpx2.Response) -> None:
    """The SDK client's response hook (backend.api_client)."""
    noted = _throttles.get()
    if noted is not None and response.status_code in (429, 529):
        noted.append(Throttle(response.status_code, response.headers.get("retry-after")))


def deadline_advice(throttles: Sequence[Throttle], otherwise: str) -> str:
    """What to tell a user whose call a deadline ended, given what the API answered meanwhile."""
    if not throttles:
        return otherwise
    last = throttles[-1]
    wait = (
        f" and asked to wait {last.retry_after} s before the next attempt"
        if last.retry_after
        else ""
    )
    if last.status == 429:
        return f"the Anthropic API was rate-limiting this key (429){wait}; ask again after that"
    return f"the Anthropic API was overloaded (529){wait}; ask again in a minute"
