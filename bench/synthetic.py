"""Deterministic synthetic English-like text for benchmarks (no corpus files needed)."""

from __future__ import annotations

import random
from pathlib import Path

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


_CJK = "東京の倉庫は毎晩出荷を確認して配送ルートを更新します。遅延した荷物は翌朝に再送されます。"


def _code(rng: random.Random, functions: int) -> str:
    out = []
    for n in range(functions):
        noun, verb = rng.choice(_NOUNS), rng.choice(_VERBS)
        out.append(
            f"def {verb}_{noun}_{n}(items: list[dict[str, int]], limit: int = {rng.randint(1, 99)})"
            f" -> int:\n    total = 0\n    for item in items:\n"
            f"        if item.get('{noun}', 0) > limit:\n"
            f"            total += item['{noun}'] * {rng.randint(2, 9)}\n    return total\n"
        )
    return "\n\n".join(out)


def _data(rng: random.Random, rows: int) -> str:
    lines = ["id,depot,parcels,weight_kg,late"]
    lines += [
        f"{i},{rng.randint(100, 999)},{rng.randint(0, 5000)},{rng.uniform(0, 900):.2f},"
        f"{rng.randint(0, 40)}"
        for i in range(rows)
    ]
    return "\n".join(lines)


def write_folder(root: Path, files: int, seed: int = 0, scale: int = 1) -> Path:
    """A folder of `files` small documents of mixed kinds, deterministic for a seed: mostly
    prose (Markdown), some code, some CSV data, a few in Japanese; `scale` multiplies each
    document's length (1: about 150 tokens on average)."""
    rng = random.Random(seed)
    for n in range(files):
        folder = root / f"part-{n // 500:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pick = rng.random()
        if pick < 0.75:
            path, text = folder / f"note-{n:05d}.md", document(seed * 100_003 + n, 6 * scale)
        elif pick < 0.88:
            path, text = folder / f"tool_{n:05d}.py", _code(rng, 2 * scale)
        elif pick < 0.96:
            path, text = folder / f"load-{n:05d}.csv", _data(rng, 8 * scale)
        else:
            path, text = folder / f"memo-{n:05d}.txt", _CJK * (2 * scale)
        path.write_text(f"{text}\n", encoding="utf-8")
    return root
