"""What the ledger says of a request beyond its usage: why a call failed and what that
was charged, and the API's diagnosis of a cache miss. Pure."""

from __future__ import annotations

from typing import Any

from corpus_cache.api.backend import describe_api_error, may_have_been_billed
from corpus_cache.models.pricing import Usage


def failure_text(
    exc: BaseException | None, seconds: float, begun: Usage | None, received: int = 0
) -> str:
    """The error recorded for a call that failed (`exc`) or was cancelled (None) after
    `seconds`. The API bills a response once it has begun, so the usage its start reported
    (`begun`) is what is charged; before that, nothing. The text says which, and when the
    API may bill a request no usage was seen for. `received`: the characters of the answer
    that had arrived."""
    if exc is None:
        error = (
            f"cancelled after {seconds:.2f} s (the deadline passed, or the client "
            "cancelled the call)"
        )
    else:
        error = describe_api_error(exc, received=received if begun is not None else None)
    if begun is not None:
        error += (
            "; the response had begun: the usage it reported at its start is recorded, "
            "and the API may bill more output than that"
        )
    elif exc is None or may_have_been_billed(exc):
        error += (
            "; no usage was reported, so none is recorded, though the API may bill a "
            "request it had begun to process"
        )
    return error


def cache_miss(message: Any) -> tuple[str | None, int | None]:
    """The API's cache miss reason and the tokens it says were missed, when it diagnosed one."""
    diagnostics = getattr(message, "diagnostics", None)
    reason = getattr(diagnostics, "cache_miss_reason", None)
    if reason is None:
        return None, None
    return str(reason.type), getattr(reason, "cache_missed_input_tokens", None)
