"""The model table: shipped data, lookups, price tiers and user overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus_cache.errors import ModelTableError, UnknownModelError
from corpus_cache.models.catalog import MODELS_FILE_ENV, load_catalog


def test_the_shipped_table_loads_and_says_when_it_was_read() -> None:
    catalog = load_catalog()
    assert catalog.as_of == "2026-11"
    assert len(catalog) >= 10
    assert len({m.id for m in catalog}) == len(catalog)


def test_figures_match_the_reference_notes() -> None:
    catalog = load_catalog()
    opus = catalog.get("claude-opus-5-5")
    assert (opus.min_cacheable_tokens, opus.input_usd_per_mtok, opus.cache_read_multiplier) == (
        512, 4.0, 0.05,
    )  # fmt: skip
    haiku = catalog.get("claude-haiku-4-5")
    assert (haiku.min_cacheable_tokens, haiku.context_window, haiku.tokenizer) == (
        4096, 200_000, "classic",
    )  # fmt: skip
    assert catalog.get("claude-opus-4-7").tokenizer == "dense"
    for spec in catalog:
        assert spec.cache_write_5m_multiplier == 1.25
        assert spec.cache_write_1h_multiplier == 2.0


def test_aliases_resolve_to_their_model() -> None:
    catalog = load_catalog()
    assert catalog.get("claude-haiku-4-5-20251001").id == "claude-haiku-4-5"


def test_an_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="claude-opus-5-5"):
        load_catalog().get("claude-opus-9")


def test_haiku_5_5_costs_five_times_more_above_100k_tokens() -> None:
    haiku = load_catalog().get("claude-haiku-5-5")
    assert haiku.prices_at(100_000) == (0.10, 0.50)
    assert haiku.prices_at(100_001) == (0.50, 2.50)


def test_unconfirmed_figures_are_flagged() -> None:
    fable = load_catalog().get("claude-fable-5-2")
    assert not fable.is_confirmed("min_cacheable_tokens")
    assert not fable.is_confirmed("cache_read_multiplier")
    assert fable.is_confirmed("input_usd_per_mtok")


def test_a_user_file_overrides_fields_and_adds_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    override = tmp_path / "models.toml"
    override.write_text(
        """
[[models]]
id = "claude-haiku-5-5"
min_cacheable_tokens = 1024

[[models]]
id = "claude-mythos-5-1"
display_name = "Claude Mythos 5.1"
released = "2026-08-01"
min_cacheable_tokens = 512
input_usd_per_mtok = 10.0
output_usd_per_mtok = 50.0
cache_read_multiplier = 0.025
context_window = 1000000
max_output_tokens = 128000
tokenizer = "dense"
"""
    )
    monkeypatch.setenv(MODELS_FILE_ENV, str(override))
    catalog = load_catalog()
    haiku = catalog.get("claude-haiku-5-5")
    assert haiku.min_cacheable_tokens == 1024
    assert haiku.input_usd_per_mtok == 0.10  # untouched fields keep their shipped value
    mythos = catalog.get("claude-mythos-5-1")
    assert mythos.cache_write_1h_multiplier == 2.0  # defaults apply to new entries


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[models]\nid=", "not valid TOML"),
        ('[[models]]\nid = "claude-new"\n', "claude-new"),
        ('[[models]]\nid = "claude-haiku-4-5"\ntokenizer = "klingon"\n', "tokenizer"),
        ('[[models]]\nid = "claude-haiku-4-5"\nunconfirmed = ["colour"]\n', "colour"),
        ("[[models]]\nname = 1\n", "needs an id"),
    ],
)
def test_a_bad_user_file_is_explained(tmp_path: Path, text: str, message: str) -> None:
    override = tmp_path / "models.toml"
    override.write_text(text)
    with pytest.raises(ModelTableError, match=message):
        load_catalog(override)


def test_a_missing_user_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelTableError, match="cannot read"):
        load_catalog(tmp_path / "nope.toml")
