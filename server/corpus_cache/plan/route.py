"""Which shard(s) should answer a question, from local BM25 hits. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def rank_shards(
    hits: Iterable[tuple[str, float]], shard_of: Mapping[str, int], shards: Iterable[int]
) -> list[int]:
    """Shards by the evidence the search found in them: the best passage counts most,
    the rest add a little, so one strong match beats many weak ones."""
    best: dict[int, float] = {}
    rest: dict[int, float] = {}
    for path, score in hits:
        shard = shard_of.get(path)
        if shard is None:
            continue
        if score > best.get(shard, 0.0):
            rest[shard] = rest.get(shard, 0.0) + best.get(shard, 0.0)
            best[shard] = score
        else:
            rest[shard] = rest.get(shard, 0.0) + score
    ordered = list(shards)
    return sorted(
        ordered,
        key=lambda s: (-(best.get(s, 0.0) + 0.1 * rest.get(s, 0.0)), ordered.index(s)),
    )
