"""Deterministic synthetic English-like text for benchmarks (no corpus files needed)."""

from __future__ import annotations

import random

_NOUNS = (
    "shipment carrier route depot invoice driver manifest pallet warehouse schedule "
    "ticket service queue replica index backup alert dashboard contract customer "
    "region "
).split()
_VERBS = (
    "books delays routes cancels audits restores rebalances forwards archives "
    "validates reroutes batches "
).split()
_ADJECTIVES = (
    "late urgent regional nightly manual automatic primary stale partial fragile overdue "
).split()


def sentence(rng: random.Random) -> str:
    words = [
        "The",
        rng.choice(_ADJECTIVES),
        rng.choice(_NOUNS),
        rng.choice(_VERBS),
        "every",
        rng.choice(_ADJECTIVES),
        rng.choice(_NOUNS),
        "before",
        f"{rng.randint(0, 23):02d}:{rng.choice(['00', '15', '30', '45'])}",
    ]
    return " ".join(words) + "."


def document(seed: int, sentences: int) -> str:
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(0, sentences, 6):
        paragraphs.append(" ".join(sentence(rng) for _ in range(6)))
    return "\n\n".join(paragraphs)
