"""How many tokens of corpus one request may carry. Pure."""

from __future__ import annotations

from corpus_cache.models.catalog import ModelSpec

DEFAULT_RESERVE = 16_000  # the question, a conversation so far, and the answer


def default_budget(model: ModelSpec, reserve: int = DEFAULT_RESERVE) -> int:
    """The context window less the reserve; below a price tier's boundary when the model has
    one (Haiku 5.5 bills every token of a prompt over 100k at 5x)."""
    limit = model.context_window
    if model.price_tiers:
        limit = min(limit, model.price_tiers[0].above_tokens)
    return max(1, limit - reserve)
