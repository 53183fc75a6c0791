"""The rate limits an emulator enforces: figures per model class, from a tier of the
limits table (models/limits.toml), figures given for every model, and figures per model or
class, as a request to /_emulator/limits or the command line gives them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from corpus_cache.models.catalog import Catalog
from corpus_cache.models.limits import LimitsTable

from .errors import invalid

Kind = Literal["requests", "input_tokens", "output_tokens"]
KINDS: tuple[Kind, ...] = ("requests", "input_tokens", "output_tokens")
_FIGURE: dict[Kind, str] = {"requests": "rpm", "input_tokens": "itpm", "output_tokens": "otpm"}


@dataclass(frozen=True)
class Figures:
    """Per-minute limits of one model class; None is no limit."""

    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    cache_reads_count: bool = False

    def per_minute(self, kind: Kind) -> int | None:
        value: int | None = getattr(self, _FIGURE[kind])
        return value

    def describe(self) -> dict[str, Any]:
        return {
            "rpm": self.rpm,
            "itpm": self.itpm,
            "otpm": self.otpm,
            "cache_reads_count": self.cache_reads_count,
        }


@dataclass(frozen=True)
class LimitConfig:
    """What the emulator enforces: figures per model class, and for token counting."""

    tier: str | None = None
    classes: Mapping[str, Figures] = field(default_factory=dict)
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default: Figures = Figures()  # models in no class, each its own class
    overrides: Figures = Figures()  # the figures given for every model
    count_tokens_rpm: int | None = None

    @property
    def enabled(self) -> bool:
        figures = [*self.classes.values(), self.default]
        return self.count_tokens_rpm is not None or any(
            f.per_minute(kind) is not None for f in figures for kind in KINDS
        )

    def for_model(self, model_id: str) -> tuple[str, Figures]:
        for name, models in self.members.items():
            if model_id in models:
                return name, self.classes.get(name, self.default)
        return model_id, self.classes.get(model_id, self.default)

    def describe(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            **self.overrides.describe(),
            "count_tokens_rpm": self.count_tokens_rpm,
            "models": {
                name: {**figures.describe(), "models": list(self.members.get(name, (name,)))}
                for name, figures in self.classes.items()
            },
        }


_FIGURE_KEYS = ("rpm", "itpm", "otpm")


def _figures_in(body: Mapping[str, Any], where: str) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for key in _FIGURE_KEYS:
        if key in body and body[key] is not None:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise invalid(f"{where}{key}: expected a positive whole number per minute")
            given[key] = value
    if "cache_reads_count" in body:
        if not isinstance(body["cache_reads_count"], bool):
            raise invalid(f"{where}cache_reads_count: expected true or false")
        given["cache_reads_count"] = body["cache_reads_count"]
    return given


def config_from(table: LimitsTable, body: Mapping[str, Any], catalog: Catalog) -> LimitConfig:
    """Limits from a request to /_emulator/limits (or the command line):
    `{"tier": "1", "rpm": .., "itpm": .., "otpm": .., "count_tokens_rpm": ..,
    "cache_reads_count": .., "models": {model id or class: {...}}}`, every key optional.
    The tier's figures come first, then those given for every model, then per model (an
    entry for a model sets its whole class: the class shares one set of buckets)."""
    known = {"tier", *_FIGURE_KEYS, "count_tokens_rpm", "cache_reads_count", "models"}
    unknown = set(body) - known
    if unknown:
        raise invalid(f"limits: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
    tier_name = body.get("tier")
    tier = None
    if tier_name is not None:
        tier_name = str(tier_name)
        tier = table.tiers.get(tier_name)
        if tier is None:
            raise invalid(f"tier: expected one of {', '.join(table.tiers)}")
    overrides = _figures_in(body, "")
    count_rpm = body.get("count_tokens_rpm", tier.count_tokens_rpm if tier else None)
    if count_rpm is not None and (
        isinstance(count_rpm, bool) or not isinstance(count_rpm, int) or count_rpm <= 0
    ):
        raise invalid("count_tokens_rpm: expected a positive whole number per minute")

    per_class: dict[str, dict[str, Any]] = {}
    for name, model_class in table.classes.items():
        figures: dict[str, Any] = {"cache_reads_count": model_class.cache_reads_count}
        if tier is not None and name in tier.classes:
            limits = tier.classes[name]
            figures.update(rpm=limits.rpm, itpm=limits.itpm, otpm=limits.otpm)
        per_class[name] = {**figures, **overrides}
    models = body.get("models", {})
    if not isinstance(models, Mapping):
        raise invalid("models: expected an object of model ids or classes")
    for name, entry in models.items():
        if not isinstance(entry, Mapping):
            raise invalid(f"models.{name}: expected an object")
        spec = catalog.find(name)
        class_name = table.class_of(spec.id) if spec is not None else name
        if spec is None and name not in table.classes:
            raise invalid(f"models.{name}: neither a model nor a model class")
        base = per_class.get(class_name, overrides)
        per_class[class_name] = {**base, **_figures_in(entry, f"models.{name}.")}
    return LimitConfig(
        tier=tier_name,
        classes={name: Figures(**figures) for name, figures in per_class.items()},
        members={name: c.models for name, c in table.classes.items()},
        default=Figures(**overrides),
        overrides=Figures(**overrides),
        count_tokens_rpm=count_rpm,
    )
