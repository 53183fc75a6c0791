"""The rate-limits table and the token buckets, as data and pure logic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.emulator.errors import ApiError
from corpus_cache.emulator.limit_config import Figures, LimitConfig, config_from
from corpus_cache.emulator.ratelimit import RateLimiter
from corpus_cache.emulator.runner import start_in_thread
from corpus_cache.errors import LimitsTableError
from corpus_cache.models.catalog import load_catalog
from corpus_cache.models.limits import load_limits, parse_limits, shipped_limits
from support.emulator_control import Control

# --- the table ----------------------------------------------------------------------------


def test_the_shipped_table_loads_with_four_tiers_and_says_when_it_was_read() -> None:
    table = load_limits()
    assert table.as_of == "2026-12"
    assert list(table.tiers) == ["1", "2", "3", "4"]
    assert table.tier is None  # no limits unless asked


def test_every_model_of_the_catalog_has_a_class_with_figures_at_every_tier() -> None:
    table = load_limits()
    catalog_ids = {m.id for m in load_catalog()}
    listed = {model for c in table.classes.values() for model in c.models}
    assert listed == catalog_ids
    for tier in table.tiers.values():
        assert set(tier.classes) == set(table.classes)
        assert tier.count_tokens_rpm is not None


def test_figures_match_the_reference_notes() -> None:
    table = load_limits()
    sonnet = [(t.classes["sonnet-4"].rpm, t.classes["sonnet-4"].itpm, t.classes["sonnet-4"].otpm)
              for t in table.tiers.values()]  # fmt: skip
    assert sonnet == [
        (50, 30_000, 8_000),
        (1_000, 450_000, 90_000),
        (2_000, 800_000, 160_000),
        (4_000, 2_000_000, 400_000),
    ]
    assert table.get_tier(1).classes["haiku-4-5"].itpm == 50_000
    assert table.class_of("claude-opus-4-5") == table.class_of("claude-opus-4-8") == "opus-4"


def test_figures_that_could_not_be_confirmed_are_marked() -> None:
    table = load_limits()
    assert not table.get_tier(4).classes["sonnet-5-5"].is_confirmed("itpm")
    assert table.get_tier(4).classes["sonnet-4"].is_confirmed("itpm")
    assert not table.get_tier(1).is_confirmed("count_tokens_rpm")
    assert not table.latency.is_confirmed("prefill_tokens_per_second")
    assert "prompt-caching" in table.latency.source


def test_a_user_file_changes_one_figure_adds_a_tier_and_picks_it(tmp_path: Path) -> None:
    mine = tmp_path / "limits.toml"
    mine.write_text(
        'tier = "mine"\n'
        "[tiers.1.classes.sonnet-4]\nitpm = 40_000\n"
        "[tiers.mine]\ncount_tokens_rpm = 10\n"
        "[tiers.mine.classes.sonnet-4]\nrpm = 5\nitpm = 5_000\notpm = 500\n"
        "[classes.sonnet-4]\ncache_reads_count = true\n"
        "[latency]\nbase_seconds = 0.1\n"
    )
    table = load_limits(mine)
    assert table.tier == "mine"
    assert table.get_tier(1).classes["sonnet-4"].itpm == 40_000
    assert table.get_tier(1).classes["sonnet-4"].rpm == 50  # the rest is kept
    assert table.classes["sonnet-4"].models == ("claude-sonnet-4-6", "claude-sonnet-4-5")
    assert table.classes["sonnet-4"].cache_reads_count
    assert table.latency.base_seconds == 0.1
    assert (
        table.latency.prefill_tokens_per_second == load_limits().latency.prefill_tokens_per_second
    )


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ('[classes.other]\nmodels = ["claude-sonnet-4-6"]\n', "is in classes"),
        ('tier = "7"\n', "tier '7' is not in the table"),
        ("[tiers.1.classes.sonnet-4]\nitpm = -1\n", "greater than 0"),
        ("[tiers.1.classes.sonnet-4]\nburst = 3\n", "burst"),
        ("tiers = [", "not valid TOML"),
    ],
)
def test_a_user_file_that_cannot_be_applied_says_why(override: str, complaint: str) -> None:
    with pytest.raises(LimitsTableError, match=complaint):
        parse_limits(shipped_limits(), override, override_origin="mine.toml")


def test_an_unknown_tier_names_the_known_ones() -> None:
    with pytest.raises(LimitsTableError, match="1, 2, 3, 4"):
        load_limits().get_tier("5")


def test_an_entry_for_a_model_sets_its_whole_class() -> None:
    config = config_from(
        load_limits(), {"tier": 1, "models": {"claude-sonnet-4-5": {"itpm": 99}}}, load_catalog()
    )
    assert config.for_model("claude-sonnet-4-6") == ("sonnet-4", config.classes["sonnet-4"])
    assert config.classes["sonnet-4"].itpm == 99
    assert config.classes["opus-4"].itpm == 30_000


# --- the buckets ----------------------------------------------------------------------------


def limiter(
    rpm: int | None = None, itpm: int | None = None, otpm: int | None = None
) -> RateLimiter:
    figures = Figures(rpm=rpm, itpm=itpm, otpm=otpm)
    return RateLimiter(LimitConfig(classes={"c": figures}, members={"c": ("m",)}))


def admit(limits: RateLimiter, tokens: int, now: float, max_tokens: int = 0) -> int | None:
    """None if admitted, else the retry-after it was refused with (0: never)."""
    try:
        limits.admit_message(
            "key", "m", uncached_tokens=tokens, cached_tokens=0, max_tokens=max_tokens, now=now
        )
    except ApiError as refusal:
        status, retry_after = refusal.status, refusal.headers.get("retry-after", "0")
    else:
        return None
    assert status == 429
    return int(retry_after)


@settings(max_examples=300, deadline=None)
@given(
    per_minute=st.integers(1, 5_000_000),
    traffic=st.lists(
        st.tuples(st.floats(0, 120, allow_nan=False), st.floats(0, 1)), min_size=1, max_size=12
    ),
)
def test_a_retry_after_the_wait_a_refusal_gives_passes_and_one_second_earlier_does_not(
    per_minute: int, traffic: list[tuple[float, float]]
) -> None:
    limits = limiter(itpm=per_minute)
    now = 1_000.0
    for gap, share in traffic:
        now += gap
        demand = max(1, math.floor(share * per_minute))
        wait = admit(limits, demand, now)
        if wait is None:
            continue
        assert wait >= 1
        if wait > 1:  # a refusal spends nothing, and refilling in steps is refilling at once
            assert admit(limits, demand, now + wait - 1) is not None
        assert admit(limits, demand, now + wait) is None
        now += wait


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(1, 100_000),
    steps=st.lists(
        st.tuples(st.floats(0, 90, allow_nan=False), st.integers(0, 100_000), st.integers(0, 100)),
        max_size=20,
    ),
)
def test_a_bucket_never_holds_more_than_a_minute_nor_less_than_nothing(
    per_minute: int, steps: list[tuple[float, int, int]]
) -> None:
    limits = limiter(otpm=per_minute)
    now = 0.0
    for gap, max_tokens, written_share in steps:
        now += gap
        try:
            admission = limits.admit_message(
                "key", "m", uncached_tokens=0, cached_tokens=0, max_tokens=max_tokens, now=now
            )
        except ApiError:
            continue
        limits.settle(admission.reservation, max_tokens * written_share // 100, now)
        for level in limits.levels(now)["key"]["c"].values():
            assert -1e-6 <= level <= per_minute


def test_a_demand_above_the_capacity_is_refused_without_a_retry_after() -> None:
    limits = limiter(itpm=30_000)
    assert admit(limits, 30_001, 0.0) == 0
    assert admit(limits, 30_000, 0.0) is None


def test_a_refused_request_takes_nothing_from_any_bucket() -> None:
    limits = limiter(rpm=10, itpm=1_000, otpm=1_000)
    assert admit(limits, 900, 0.0, max_tokens=100) is None
    assert admit(limits, 200, 0.0, max_tokens=10) is not None  # input tokens short
    assert admit(limits, 50, 0.0, max_tokens=10) is None  # requests were not spent


# --- an emulator started with them ----------------------------------------------------------


def test_an_emulator_started_at_a_tier_with_a_user_file_applies_both(tmp_path: Path) -> None:
    mine = tmp_path / "limits.toml"
    mine.write_text("[tiers.3.classes.opus-4]\nrpm = 7\n")
    with start_in_thread(tier=3, limits_file=mine, latency="realistic", time_scale=50) as running:
        control = Control(running.base_url)
        shown = control.http.get("/_emulator/limits").json()
        latency = control.http.get("/_emulator/latency").json()
        control.http.close()
    assert shown["tier"] == "3"
    assert shown["models"]["opus-4"]["rpm"] == 7
    assert shown["models"]["opus-4"]["itpm"] == 800_000
    assert (latency["mode"], latency["time_scale"]) == ("realistic", 50)
