"""The model table: ids, cache minimums, prices and windows, loaded from TOML data.

The shipped table is `models.toml` beside this module. A user file (passed explicitly or
named by CORPUS_CACHE_MODELS_FILE) overrides fields of shipped entries by id and may add
new models; it uses the same format.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from corpus_cache.errors import ModelTableError, UnknownModelError

MODELS_FILE_ENV = "CORPUS_CACHE_MODELS_FILE"

Tokenizer = Literal["classic", "dense"]


class PriceTier(BaseModel):
    """Prices that apply once a prompt is longer than `above_tokens`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    above_tokens: int = Field(gt=0)
    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    display_name: str
    aliases: tuple[str, ...] = ()
    released: date
    retires: date | None = None
    min_cacheable_tokens: int = Field(gt=0)
    input_usd_per_mtok: float = Field(ge=0)
    output_usd_per_mtok: float = Field(ge=0)
    cache_read_multiplier: float = Field(ge=0)
    cache_write_5m_multiplier: float = Field(ge=0)
    cache_write_1h_multiplier: float = Field(ge=0)
    # Positions a breakpoint searches backwards for an entry, itself included (documented: 20).
    cache_lookback: int = Field(default=20, gt=0)
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(gt=0)
    tokenizer: Tokenizer
    price_tiers: tuple[PriceTier, ...] = ()
    unconfirmed: tuple[str, ...] = ()
    note: str = ""

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        unknown = set(self.unconfirmed) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unconfirmed names fields that do not exist: {sorted(unknown)}")
        bounds = [tier.above_tokens for tier in self.price_tiers]
        if bounds != sorted(set(bounds)):
            raise ValueError("price_tiers must be in increasing order of above_tokens")
        return self

    def prices_at(self, prompt_tokens: int) -> tuple[float, float]:
        """(input, output) USD per million tokens for a prompt of this many tokens.

        The prompt length is input + cache reads + cache writes, as the API counts it.
        """
        prices = (self.input_usd_per_mtok, self.output_usd_per_mtok)
        for tier in self.price_tiers:
            if prompt_tokens > tier.above_tokens:
                prices = (tier.input_usd_per_mtok, tier.output_usd_per_mtok)
        return prices

    def is_confirmed(self, field: str) -> bool:
        return field not in self.unconfirmed


class Catalog:
    """Models by id and alias, in the order the table lists them."""

    def __init__(self, models: list[ModelSpec], *, as_of: str, source: str) -> None:
        self.as_of = as_of
        self.source = source
        self.models: tuple[ModelSpec, ...] = tuple(models)
        self._by_name: dict[str, ModelSpec] = {}
        for spec in models:
            for name in (spec.id, *spec.aliases):
                if name in self._by_name:
                    raise ModelTableError(f"model name {name!r} is listed twice")
                self._by_name[name] = spec

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def find(self, name: str) -> ModelSpec | None:
        return self._by_name.get(name)

    def get(self, name: str) -> ModelSpec:
        spec = self.find(name)
        if spec is None:
            raise UnknownModelError(name, [m.id for m in self.models])
        return spec


def read_toml(
    text: str, origin: str, error: type[ModelTableError] = ModelTableError
) -> dict[str, Any]:
    """A table file's contents; `error`, naming `origin`, when it is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{origin}: not valid TOML: {exc}") from exc


def _entries(table: Mapping[str, Any], origin: str) -> list[dict[str, Any]]:
    entries = table.get("models", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ModelTableError(f"{origin}: expected [[models]] tables")
    for entry in entries:
        if not isinstance(entry.get("id"), str):
            raise ModelTableError(f"{origin}: every [[models]] entry needs an id")
    return entries


def _build(raw: dict[str, Any], origin: str) -> ModelSpec:
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise ModelTableError(f"{origin}: model {raw.get('id')!r}: {exc}") from exc


def parse_catalog(
    shipped: str, override: str | None = None, *, override_origin: str = ""
) -> Catalog:
    """Build a catalog from the shipped table's text and an optional override's text."""
    base = read_toml(shipped, "models.toml")
    defaults: dict[str, Any] = dict(base.get("defaults", {}))
    merged: dict[str, dict[str, Any]] = {}
    for entry in _entries(base, "models.toml"):
        merged[entry["id"]] = {**defaults, **entry}
    if override is not None:
        origin = override_origin or "override"
        extra = read_toml(override, origin)
        defaults.update(extra.get("defaults", {}))
        for entry in _entries(extra, origin):
            current = merged.get(entry["id"], defaults)
            merged[entry["id"]] = {**current, **entry}
    models = [_build(raw, override_origin or "models.toml") for raw in merged.values()]
    return Catalog(
        models, as_of=str(base.get("as_of", "unknown")), source=str(base.get("source", ""))
    )


def shipped_table() -> str:
    return (
        resources.files("corpus_cache.models").joinpath("models.toml").read_text(encoding="utf-8")
    )


def load_catalog(override_file: Path | None = None) -> Catalog:
    """The shipped table, with the user's file (argument, else environment) applied."""
    if override_file is None and os.environ.get(MODELS_FILE_ENV):
        override_file = Path(os.environ[MODELS_FILE_ENV])
    override = read_user_file(override_file, "model file")
    return parse_catalog(shipped_table(), override, override_origin=str(override_file or ""))


def read_user_file(
    path: Path | None, what: str, error: type[ModelTableError] = ModelTableError
) -> str | None:
    """The text of a user's override file (None when there is none); `error` when it
    cannot be read."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
