"""What the ledger says of a request beyond its usage: why an attempt failed, what it was
charged and whether the API billed it, and the API's diagnosis of a cache miss. Pure."""

from __future__ import annotations

from typing import Any

from corpus_cache.accounting.ledger import BILLED, MAYBE, UNBILLED
from corpus_cache.api.retrying import Failure
from corpus_cache.models.pricing import Usage


def billing_of(failure: Failure | None, begun: Usage | None) -> str:
    """Whether the API billed a failed (`failure`) or cancelled (None) attempt: surely,
    once its response had begun (`begun`); surely not, when it refused it or never got it;
    else perhaps (ledger.BILLED, UNBILLED, MAYBE)."""
    if begun is not None:
        return BILLED
    if failure is not None and failure.kind in ("refused", "unreached"):
        return UNBILLED
    return MAYBE


def failure_text(
    error: str,
    billing: str,
    *,
    begun: Usage | None,
    estimate_usd: float,
    received: int = 0,
    counted: bool = False,
) -> str:
    """The error recorded for a failed or cancelled attempt: `error` (what happened), then
    what is charged and why. `begun`: the usage the response reported at its start, if it
    had begun; `received`: the characters of the answer that had arrived, whose output
    tokens were `counted` (with count_tokens) or not; `estimate_usd`: what it would cost
    if it ran, for an attempt whose usage is not known."""
    if billing == UNBILLED:
        return error
    if billing == MAYBE:
        return (
            f"{error}; no response began, so no usage is known: the API may bill a request it "
            f"had begun to process, about ${estimate_usd:.4f} for its prompt (an estimate, "
            "recorded apart as may have been billed)"
        )
    assert begun is not None
    if counted and received:
        known = "the usage its start reported and the output tokens of the text that arrived"
    else:
        known = "the usage its start reported"
    return (
        f"{error}; the response had begun: {known} is recorded, and the API may bill more "
        "output than arrived"
    )


def cancelled_text(seconds: float, reason: str) -> str:
    """What a cancelled attempt's row says happened."""
    return f"cancelled after {seconds:.2f} s ({reason})"


def cache_miss(message: Any) -> tuple[str | None, int | None]:
    """The API's cache miss reason and the tokens it says were missed, when it diagnosed one."""
    diagnostics = getattr(message, "diagnostics", None)
    reason = getattr(diagnostics, "cache_miss_reason", None)
    if reason is None:
        return None, None
    return str(reason.type), getattr(reason, "cache_missed_input_tokens", None)
