"""Spending: what a question is expected to cost before it is sent, and the daily cap
(--max-usd-per-day) that refuses one whose estimate would take the spend over it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.config import Settings
from corpus_cache.engine.sessions import estimate_tokens
from corpus_cache.errors import BudgetExceededError
from corpus_cache.models.pricing import project_question
from corpus_cache.plan.layout import Shard

if TYPE_CHECKING:
    from corpus_cache.engine.core import Engine

DAY_SECONDS = 86_400.0


def estimate_usd(
    engine: Engine, corpus: Corpus, shard: Shard, question: str, conversation_tokens: int = 0
) -> float:
    """What asking `question` on `shard` should cost, with a full-length answer: reading
    the cached prefix if its end is believed warm, else writing it. A conversation is
    priced as uncached input, which is never less than what it costs."""
    plan = shard.plan
    cached = max((b.prefix_tokens for b in plan.blocks if b.ttl), default=0)
    decision = engine.ttl_decision(shard) if plan.cached else None
    ttl = "1h" if decision and "1h" in (decision.stable_ttl, decision.tail_ttl) else "5m"
    cold, warm, uncached = project_question(
        cached if plan.cached else 0,
        plan.total_tokens - (cached if plan.cached else 0) + conversation_tokens,
        engine.model,
        question_tokens=estimate_tokens(question),
        output_tokens=engine.settings.max_answer_tokens,
        ttl=ttl,
    )
    if not plan.cached or not plan.anchors:
        return uncached
    ids = corpus.anchor_ids.get(shard.number, {})
    end = ids.get(plan.anchors[-1])
    return warm if end is not None and engine.entries.alive(end, engine.clock()) else cold


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
        self._pending_usd = 0.0  # estimates of questions sent and not yet recorded

    @contextmanager
    def within(self, estimate: float) -> Iterator[None]:
        """Refuse, sending nothing, if the last 24 hours' spend on this corpus, plus what
        questions under way are expected to cost, plus `estimate`, exceeds the daily cap."""
        cap = self._settings.max_usd_per_day
        if cap is not None:
            spent = self._spent_since(self._clock() - DAY_SECONDS)
            if spent + self._pending_usd + estimate > cap:
                under_way = (
                    f" and ${self._pending_usd:.4f} for questions under way"
                    if self._pending_usd
                    else ""
                )
                raise BudgetExceededError(
                    f"not sent: this question is estimated at ${estimate:.4f}, and "
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
