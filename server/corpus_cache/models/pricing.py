"""Usage → dollars, and what the same request would have cost without caching. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from corpus_cache.models.catalog import ModelSpec

_PER_TOKEN = 1e-6  # prices are per million tokens

# A cache entry's time to live, and how long that is: each is written at its own price.
Ttl = Literal["5m", "1h"]
TTL_SECONDS: dict[Ttl, float] = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True)
class Usage:
    """Token usage of one response, with cache writes split by TTL."""

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    output_tokens: int = 0

    @property
    def cache_write_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: `input_tokens` counts only what follows the last breakpoint."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @classmethod
    def from_api(cls, usage: Any) -> Usage:
        """From an SDK `Usage`; None counts as 0, and a missing TTL split as all 5-minute."""
        written = usage.cache_creation_input_tokens or 0
        split = getattr(usage, "cache_creation", None)
        one_hour = split.ephemeral_1h_input_tokens if split is not None else 0
        return cls(
            input_tokens=usage.input_tokens or 0,
            cache_read_tokens=usage.cache_read_input_tokens or 0,
            cache_write_5m_tokens=written - one_hour,
            cache_write_1h_tokens=one_hour,
            output_tokens=usage.output_tokens or 0,
        )


def cost_usd(usage: Usage, model: ModelSpec) -> float:
    """What the API bills for this usage (standard tier, no batch discount)."""
    input_price, output_price = model.prices_at(usage.prompt_tokens)
    prompt = (
        usage.input_tokens
        + usage.cache_read_tokens * model.cache_read_multiplier
        + usage.cache_write_5m_tokens * model.cache_write_5m_multiplier
        + usage.cache_write_1h_tokens * model.cache_write_1h_multiplier
    )
    return (prompt * input_price + usage.output_tokens * output_price) * _PER_TOKEN


def uncached_cost_usd(usage: Usage, model: ModelSpec) -> float:
    """The counterfactual: the same prompt and output with no cache at all."""
    input_price, output_price = model.prices_at(usage.prompt_tokens)
    return (usage.prompt_tokens * input_price + usage.output_tokens * output_price) * _PER_TOKEN


def hit_rate(cache_read_tokens: int, prompt_tokens: int) -> float:
    """Share of all prompt tokens that were read from the cache."""
    return cache_read_tokens / prompt_tokens if prompt_tokens else 0.0


def project_question(
    cached_prefix_tokens: int,
    uncached_tokens: int,
    model: ModelSpec,
    *,
    question_tokens: int = 50,
    output_tokens: int = 500,
    ttl: str = "5m",
) -> tuple[float, float, float]:
    """(cold, warm, uncached) dollars for one question against a prefix.

    Cold writes the cached prefix, warm reads it, uncached sends it all at the input price.
    """
    tail = uncached_tokens + question_tokens
    write = Usage(
        input_tokens=tail,
        cache_write_5m_tokens=cached_prefix_tokens if ttl == "5m" else 0,
        cache_write_1h_tokens=cached_prefix_tokens if ttl == "1h" else 0,
        output_tokens=output_tokens,
    )
    read = Usage(
        input_tokens=tail, cache_read_tokens=cached_prefix_tokens, output_tokens=output_tokens
    )
    return cost_usd(write, model), cost_usd(read, model), uncached_cost_usd(read, model)
