"""The `refresh` tool: rescan the folder now, optionally write the cache, say what changed.

The folder is watched, so this is for filesystems whose events do not arrive, for a
client that wants to be sure before it asks, and for warming the cache ahead of a
question (which costs a cache write, and saves the first question from paying it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from corpus_cache.corpus.changes import snapshot_changes
from corpus_cache.mcp_surface.results import iso

if TYPE_CHECKING:  # loaded after the server answers: see startup.py
    from corpus_cache.engine.core import Engine
from corpus_cache.wording import plural

PATHS_SHOWN = 50  # per list, so a rescan after a big checkout stays a small result


class WarmedShard(BaseModel):
    shard: int
    cache_write_tokens: int
    cache_read_tokens: int
    cost_usd: float


class RefreshResult(BaseModel):
    snapshot_version: int
    snapshot_time: str
    documents: int
    added: list[str]
    removed: list[str]
    changed: list[str]
    paths_not_shown: int = Field(0, description="paths left out of the three lists above")
    warmed: list[WarmedShard] = Field(description="one warming request per cached shard")
    warm_note: str | None = Field(None, description="why nothing was warmed, if it was asked")
    ledger_note: str | None = Field(
        None,
        description="set when the ledger could not record a warming request: why, and where "
        "its row is kept until it is added",
    )


async def refresh_corpus(engine: Engine, *, warm_cache: bool) -> RefreshResult:
    # Loaded with the engine, which is here: importing it now is immediate.
    from corpus_cache.engine.warm import WarmRun, warm

    before = engine.current
    after = await engine.refresh()
    changes = snapshot_changes(before.snapshot, after.snapshot)
    run = await warm(engine, after) if warm_cache else WarmRun()
    warmed = run.warmed
    note = None
    if run.refused:
        note = f"not warmed, nothing sent: {run.refused[0]}"
    elif warm_cache and not warmed:
        note = "nothing to warm: no part of the corpus is long enough to be cached"
    lists = [
        list(paths[:PATHS_SHOWN]) for paths in (changes.added, changes.removed, changes.changed)
    ]
    total = len(changes.added) + len(changes.removed) + len(changes.changed)
    unrecorded = list(dict.fromkeys(w.unrecorded for w in warmed if w.unrecorded))
    return RefreshResult(
        snapshot_version=after.snapshot.version,
        snapshot_time=iso(after.snapshot.created_at),
        documents=len(after.snapshot.documents),
        added=lists[0],
        removed=lists[1],
        changed=lists[2],
        paths_not_shown=total - sum(len(paths) for paths in lists),
        warmed=[
            WarmedShard(
                shard=w.shard,
                cache_write_tokens=w.usage.cache_write_5m_tokens + w.usage.cache_write_1h_tokens,
                cache_read_tokens=w.usage.cache_read_tokens,
                cost_usd=round(w.cost_usd, 6),
            )
            for w in warmed
        ],
        warm_note=note,
        ledger_note=(
            "the ledger could not record the warming: " + "; ".join(unrecorded)
            if unrecorded
            else None
        ),
    )


def render_refresh(out: RefreshResult) -> str:
    def named(verb: str, paths: list[str]) -> str:
        return f"{verb}: {', '.join(paths)}" if paths else ""

    counts = (
        f"{len(out.added)} added, {len(out.removed)} removed, {len(out.changed)} changed"
        if out.added or out.removed or out.changed
        else "nothing changed"
    )
    lines = [
        f"Rescanned: snapshot v{out.snapshot_version} of {out.snapshot_time}, "
        f"{plural(out.documents, 'document')}; {counts}."
    ]
    lines += [
        line
        for line in (
            named("Added", out.added), named("Removed", out.removed), named("Changed", out.changed)
        )
        if line
    ]  # fmt: skip
    if out.paths_not_shown:
        lines.append(f"(and {out.paths_not_shown} more paths)")
    for w in out.warmed:
        lines.append(
            f"Warmed shard {w.shard}: {w.cache_write_tokens:,} tokens written to the cache, "
            f"{w.cache_read_tokens:,} read from it; ${w.cost_usd:.4f}."
        )
    if out.warm_note:
        lines.append(out.warm_note[0].upper() + out.warm_note[1:] + ".")
    if out.ledger_note:
        lines.append(f"Note: {out.ledger_note}.")
    return "\n".join(lines)
