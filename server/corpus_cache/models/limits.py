"""The rate-limits table: model classes, per-tier figures and the latency model, as data.

The shipped table is `limits.toml` beside this module. A user file (`corpus-cache emulator
--limits FILE`) in the same format is merged into it table by table: it may change a
figure of one class at one tier, add a class or a tier of its own (tiers are names; the
shipped ones are "1" to "4"), change the latency model, and pick the tier in effect with a
top-level `tier = "2"`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from corpus_cache.errors import LimitsTableError
from corpus_cache.models.catalog import read_toml, read_user_file


class _Figures(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    unconfirmed: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check_unconfirmed(self) -> _Figures:
        unknown = set(self.unconfirmed) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unconfirmed names fields that do not exist: {sorted(unknown)}")
        return self

    def is_confirmed(self, field: str) -> bool:
        return field not in self.unconfirmed


class ClassLimits(_Figures):
    """Requests, input tokens and output tokens per minute for one model class."""

    rpm: int = Field(gt=0)
    itpm: int = Field(gt=0)
    otpm: int = Field(gt=0)


class Tier(_Figures):
    count_tokens_rpm: int | None = Field(default=None, gt=0)
    classes: dict[str, ClassLimits] = {}


class ModelClass(BaseModel):
    """Models that share one set of buckets. `cache_reads_count`: the rate-limits page
    marks the class with a dagger, and its cache reads count toward input tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    models: tuple[str, ...] = ()
    cache_reads_count: bool = False


class LatencyFigures(_Figures):
    """Time to first token = base + uncached / prefill + cached / read; then output."""

    base_seconds: float = Field(ge=0)
    prefill_tokens_per_second: float = Field(gt=0)
    read_tokens_per_second: float = Field(gt=0)
    output_tokens_per_second: float = Field(gt=0)
    source: str = ""


class LimitsTable(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    as_of: str = "unknown"
    source: str = ""
    tier: str | None = None  # the tier a user's file puts in effect
    classes: dict[str, ModelClass] = {}
    tiers: dict[str, Tier] = {}
    latency: LatencyFigures

    @model_validator(mode="after")
    def _check(self) -> LimitsTable:
        seen: dict[str, str] = {}
        for name, model_class in self.classes.items():
            for model in model_class.models:
                if model in seen:
                    raise ValueError(f"model {model!r} is in classes {seen[model]!r} and {name!r}")
                seen[model] = name
        if self.tier is not None and self.tier not in self.tiers:
            raise ValueError(f"tier {self.tier!r} is not in the table ({', '.join(self.tiers)})")
        return self

    def class_of(self, model_id: str) -> str:
        """The class whose buckets a model uses; a model in no class has its own."""
        for name, model_class in self.classes.items():
            if model_id in model_class.models:
                return name
        return model_id

    def get_tier(self, name: str | int) -> Tier:
        tier = self.tiers.get(str(name))
        if tier is None:
            raise LimitsTableError(
                f"unknown tier {name!r}; the limits table has tiers {', '.join(self.tiers)}"
            )
        return tier


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value (a figure, a list) replaces."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def parse_limits(
    shipped: str, override: str | None = None, *, override_origin: str = ""
) -> LimitsTable:
    raw = read_toml(shipped, "limits.toml", LimitsTableError)
    origin = "limits.toml"
    if override is not None:
        origin = override_origin or "limits override"
        extra = read_toml(override, origin, LimitsTableError)
        if isinstance(extra.get("tier"), int):
            extra["tier"] = str(extra["tier"])
        raw = _merge(raw, extra)
    try:
        return LimitsTable.model_validate(raw)
    except ValidationError as exc:
        raise LimitsTableError(f"{origin}: {exc}") from exc


def shipped_limits() -> str:
    return (
        resources.files("corpus_cache.models").joinpath("limits.toml").read_text(encoding="utf-8")
    )


def load_limits(override_file: Path | None = None) -> LimitsTable:
    """The shipped table, with the user's file merged into it."""
    override = read_user_file(override_file, "limits file", LimitsTableError)
    return parse_limits(shipped_limits(), override, override_origin=str(override_file or ""))
