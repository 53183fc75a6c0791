"""Pricing against hand-worked examples from the documentation's price table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.models.catalog import load_catalog
from corpus_cache.models.pricing import Usage, cost_usd, uncached_cost_usd

CATALOG = load_catalog()


def test_a_5m_write_costs_1_25x_input() -> None:
    # Sonnet 4.6: $3 per million input tokens → a 5m write of 1M tokens is $3.75.
    usage = Usage(cache_write_5m_tokens=1_000_000)
    assert cost_usd(usage, CATALOG.get("claude-sonnet-4-6")) == pytest.approx(3.75)


def test_a_1h_write_costs_2x_input_not_the_5m_rate() -> None:
    usage = Usage(cache_write_1h_tokens=1_000_000)
    assert cost_usd(usage, CATALOG.get("claude-sonnet-4-6")) == pytest.approx(6.00)


def test_a_read_costs_0_1x_input() -> None:
    usage = Usage(cache_read_tokens=1_000_000)
    assert cost_usd(usage, CATALOG.get("claude-haiku-4-5")) == pytest.approx(0.10)


def test_reads_below_0_1x_on_newer_models() -> None:
    usage = Usage(cache_read_tokens=1_000_000)
    assert cost_usd(usage, CATALOG.get("claude-opus-5-5")) == pytest.approx(0.20)  # 4 x 0.05
    assert cost_usd(usage, CATALOG.get("claude-fable-5-1")) == pytest.approx(0.25)  # 10 x 0.025


def test_a_mixed_request_prices_each_part_at_its_own_rate() -> None:
    # Opus 5: $5 in / $25 out. 100k read, 20k 1h write, 5k 5m write, 500 input, 1k output.
    usage = Usage(
        input_tokens=500,
        cache_read_tokens=100_000,
        cache_write_1h_tokens=20_000,
        cache_write_5m_tokens=5_000,
        output_tokens=1_000,
    )
    expected = (500 * 5 + 100_000 * 0.5 + 20_000 * 10 + 5_000 * 6.25 + 1_000 * 25) / 1e6
    assert cost_usd(usage, CATALOG.get("claude-opus-5")) == pytest.approx(expected)
    uncached = (125_500 * 5 + 1_000 * 25) / 1e6
    assert uncached_cost_usd(usage, CATALOG.get("claude-opus-5")) == pytest.approx(uncached)


def test_haiku_5_5_bills_a_long_prompt_at_the_upper_tier() -> None:
    haiku = CATALOG.get("claude-haiku-5-5")
    short = Usage(cache_read_tokens=90_000, input_tokens=10_000)  # exactly 100k: low tier
    long = Usage(cache_read_tokens=90_001, input_tokens=10_000)
    assert cost_usd(short, haiku) == pytest.approx((90_000 * 0.01 + 10_000 * 0.10) / 1e6)
    assert cost_usd(long, haiku) == pytest.approx((90_001 * 0.05 + 10_000 * 0.50) / 1e6)


def test_usage_from_the_sdk_treats_missing_fields_as_zero() -> None:
    raw = SimpleNamespace(
        input_tokens=7,
        output_tokens=3,
        cache_read_input_tokens=None,
        cache_creation_input_tokens=None,
        cache_creation=None,
    )
    assert Usage.from_api(raw) == Usage(input_tokens=7, output_tokens=3)


def test_usage_from_the_sdk_keeps_the_ttl_split() -> None:
    raw = SimpleNamespace(
        input_tokens=1,
        output_tokens=0,
        cache_read_input_tokens=10,
        cache_creation_input_tokens=30,
        cache_creation=SimpleNamespace(ephemeral_5m_input_tokens=10, ephemeral_1h_input_tokens=20),
    )
    usage = Usage.from_api(raw)
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (10, 20)
    assert usage.prompt_tokens == 41


counts = st.integers(0, 2_000_000)


@given(counts, counts, counts, counts, counts, st.sampled_from([m.id for m in CATALOG]))
def test_caching_reads_never_cost_more_than_uncached(i, r, w5, w1, o, model) -> None:  # type: ignore[no-untyped-def]
    spec = CATALOG.get(model)
    reads_only = Usage(input_tokens=i, cache_read_tokens=r, output_tokens=o)
    assert cost_usd(reads_only, spec) <= uncached_cost_usd(reads_only, spec) + 1e-12
    writes = Usage(i, r, w5, w1, o)
    assert cost_usd(writes, spec) >= 0
