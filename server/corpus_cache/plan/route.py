"""Which shard(s) should answer a question, from local BM25 hits. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HITS = 50  # the passages a question's routing weighs
DOCUMENT_WEIGHT = 0.5  # a passage's evidence gains this share of its whole document's score
SUPPORTING_HITS = 3  # a shard's passages after its best that add to its evidence
SUPPORT_WEIGHT = 0.1
# The runner-up is asked too when its evidence is at least this share of the best's (chosen
# on the tuning half of the held-out check, docs/caching.md "Shards and routing").
UNSURE = 0.8


def shard_evidence(
    hits: Iterable[tuple[str, float]], shard_of: Mapping[str, int]
) -> dict[int, float]:
    """Each shard's evidence, for the shards with a hit: its best passage's score, plus
    SUPPORT_WEIGHT of each of its next SUPPORTING_HITS. Weak matches are often ties on
    common words (a question's "where is ... stored?"), and however many of them land in
    one shard they add at most 0.3 of that shard's own best. A hit's score is the search's
    (corpus/search.py: its passage's, and DOCUMENT_WEIGHT of its document's)."""
    scores: dict[int, list[float]] = {}
    for path, score in hits:
        shard = shard_of.get(path)
        if shard is not None:
            scores.setdefault(shard, []).append(score)
    evidence = {}
    for shard, found in scores.items():
        found.sort(reverse=True)
        evidence[shard] = found[0] + SUPPORT_WEIGHT * sum(found[1 : 1 + SUPPORTING_HITS])
    return evidence


def rank_shards(
    hits: Iterable[tuple[str, float]], shard_of: Mapping[str, int], shards: Iterable[int]
) -> list[int]:
    """Shards by the evidence the search found in them (`shard_evidence`), best first; so
    one strong match beats many weak ones. Without evidence, in the order given."""
    evidence = shard_evidence(hits, shard_of)
    ordered = list(shards)
    return sorted(ordered, key=lambda s: (-evidence.get(s, 0.0), ordered.index(s)))


def unsure_shards(
    ranked: list[int],
    evidence: Mapping[int, float],
    tokens: Mapping[int, int],
    within_tokens: int,
) -> list[int]:
    """The shards to ask when the asker left it to the routing: the best, and the runner-up
    too when the routing is unsure (its evidence at least UNSURE of the best's) and the two
    together read no more than `within_tokens` (one shard of the window: so asking both
    costs less than one question to a shard of the window would)."""
    if len(ranked) < 2:
        return ranked[:1]
    best, runner_up = ranked[0], ranked[1]
    strongest = evidence.get(best, 0.0)
    close = strongest > 0 and evidence.get(runner_up, 0.0) >= UNSURE * strongest
    if close and tokens[best] + tokens[runner_up] <= within_tokens:
        return [best, runner_up]
    return [best]
