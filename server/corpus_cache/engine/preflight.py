"""What stops an engine before anything starts, checked cheaply: the model, the rate-limits
tier and the corpus folder. Light on purpose (no SDK, no emulator): `corpus-cache serve`
checks these before it answers MCP, and loads the engine's stack after."""

from __future__ import annotations

from dataclasses import dataclass

from corpus_cache.config import Settings
from corpus_cache.corpus.beneath import CorpusRoot
from corpus_cache.models.catalog import Catalog, ModelSpec, load_catalog
from corpus_cache.models.limits import load_limits


@dataclass(frozen=True)
class Preflight:
    """What the checks opened, for the engine to start from: the model table, the model,
    and the corpus folder's descriptor (the folder served is the one checked)."""

    catalog: Catalog
    model: ModelSpec
    root: CorpusRoot


def preflight(settings: Settings) -> Preflight:
    """Raise, as the engine's start would, for an unknown model, a limits file or tier that
    cannot be used, or a missing or unreadable folder; else what was opened."""
    catalog = load_catalog(settings.models_file)
    model = catalog.get(settings.model)
    if settings.tier is not None or settings.limits_file is not None:
        table = load_limits(settings.limits_file)  # a file's own `tier` is checked here
        if settings.tier is not None:
            table.get_tier(settings.tier)  # an unknown tier is the user's error, said plainly
    # The folder last: its descriptor is held once it is open.
    return Preflight(catalog, model, CorpusRoot(settings.corpus))
