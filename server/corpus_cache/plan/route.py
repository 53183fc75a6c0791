"""Which shard(s) should answer a question, from local BM25 hits. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HITS = 50  # the passages a question's routing weighs
DOCUMENT_WEIGHT = 0.5  # a passage's evidence gains this share of its whole document's score
SUPPORTING_HITS = 3  # a shard's passages after its best that add to its evidence
SUPPORT_WEIGHT = 0.1


def rank_shards(
    hits: Iterable[tuple[str, float]], shard_of: Mapping[str, int], shards: Iterable[int]
) -> list[int]:
    """Shards by the evidence the search found in them: the best passage counts most, and
    the next few add a little, so one strong match beats many weak ones. Weak matches are
    often ties on common words (a question's "where is ... stored?"), and however many of
    them land in one shard they add at most 0.3 of that shard's own best. A hit's score is
    the search's (corpus/search.py: its passage's, and DOCUMENT_WEIGHT of its document's)."""
    scores: dict[int, list[float]] = {}
    for path, score in hits:
        shard = shard_of.get(path)
        if shard is not None:
            scores.setdefault(shard, []).append(score)

    def evidence(shard: int) -> float:
        found = sorted(scores.get(shard, ()), reverse=True)
        if not found:
            return 0.0
        return found[0] + SUPPORT_WEIGHT * sum(found[1 : 1 + SUPPORTING_HITS])

    ordered = list(shards)
    return sorted(ordered, key=lambda s: (-evidence(s), ordered.index(s)))
