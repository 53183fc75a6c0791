"""Spending: what a request is expected to cost before it is sent, and the daily cap
(--max-usd-per-day) that refuses one whose estimate would take the spend over it. The API
caller checks the cap for every request that spends: questions, warming, keep-warm."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from corpus_cache.config import Settings
from corpus_cache.errors import BudgetExceededError
from corpus_cache.models.catalog import ModelSpec
from corpus_cache.models.pricing import Ttl, Usage, cost_usd
from corpus_cache.plan.layout import Plan

DAY_SECONDS = 86_400.0
# A marker block's text is a few characters: priced as this many tokens, which it never
# exceeds.
MARKER_TOKENS = 8


def estimate_request_usd(
    model: ModelSpec,
    plan: Plan,
    *,
    marked: Sequence[int],
    alive: Collection[int],
    ttls: Mapping[int, Ttl],
    extra_input_chars: int,
    markers: int,
    max_tokens: int,
) -> tuple[float, float]:
    """What a request on `plan` should cost at most, as (input, answer) dollars, from the
    counted tokens the API bills: the prefix through the furthest entry believed alive is
    read, what follows up to the last breakpoint is written (at the dearer TTL among the
    breakpoints written), the rest is uncached input, and the answer is full length.
    Text never counted (the question, a conversation) is priced at a token a character,
    which no tokenizer exceeds."""
    read = written = 0
    write_ttl: Ttl = "5m"
    if marked:
        end = max(marked)
        through_end = plan.tokens_through(end)
        reached = [a for a in alive if a <= end]
        read = plan.tokens_through(max(reached)) if reached else 0
        written = through_end - read
        if any(ttls[a] == "1h" for a in marked if a not in alive):
            write_ttl = "1h"
        uncached = plan.total_tokens - through_end
    else:
        uncached = plan.total_tokens
    written += markers * MARKER_TOKENS
    uncached += extra_input_chars
    usage = Usage(
        input_tokens=uncached,
        cache_read_tokens=read,
        cache_write_5m_tokens=written if write_ttl == "5m" else 0,
        cache_write_1h_tokens=written if write_ttl == "1h" else 0,
    )
    return cost_usd(usage, model), cost_usd(Usage(output_tokens=max_tokens), model)


# The dollars a question set aside for all its requests (a fan-out asks several shards at
# once): within it, each request is already counted, and refused or sent as one.
_reserved: ContextVar[bool] = ContextVar("corpus_cache_reserved", default=False)


class DailyCap:
    def __init__(
        self,
        settings: Settings,
        spent_since: Callable[[float], float],
        clock: Callable[[], float],
    ) -> None:
        """`spent_since(t)`: what has been spent on the corpus since time `t`. The cap is
        read from `settings` at each question, so a changed cap applies at once."""
        self._settings = settings
        self._spent_since = spent_since
        self._clock = clock
        self._pending_usd = 0.0  # estimates of requests sent and not yet recorded

    @contextmanager
    def within(self, estimate: float, what: str = "this question") -> Iterator[None]:
        """Refuse, sending nothing, if the last 24 hours' spend on this corpus, plus what
        requests under way are expected to cost, plus `estimate`, exceeds the daily cap.
        Inside `within` already (a question's requests), it is counted there."""
        if _reserved.get():
            yield
            return
        token = _reserved.set(True)
        try:
            with self._checked(estimate, what):
                yield
        finally:
            _reserved.reset(token)

    @contextmanager
    def _checked(self, estimate: float, what: str) -> Iterator[None]:
        cap = self._settings.max_usd_per_day
        if cap is not None:
            spent = self._spent_since(self._clock() - DAY_SECONDS)
            if spent + self._pending_usd + estimate > cap:
                under_way = (
                    f" and ${self._pending_usd:.4f} for requests under way"
                    if self._pending_usd
                    else ""
                )
                raise BudgetExceededError(
                    f"not sent: {what} is estimated at ${estimate:.4f}, and "
                    f"${spent:.4f} has been spent on this corpus in the last 24 hours"
                    f"{under_way}, which would exceed the cap of ${cap:.2f} a day "
                    "(--max-usd-per-day). Raise the cap, or wait until earlier spend is more "
                    "than 24 hours old.",
                    spent_usd=spent,
                    estimate_usd=estimate,
                    cap_usd=cap,
                )
        self._pending_usd += estimate
        try:
            yield
        finally:
            self._pending_usd = max(0.0, self._pending_usd - estimate)
