"""How long the planner takes for 10,000 documents, against a naive layout in the same run.

The baseline is what any layout must do at least: sort the documents by path and sum
their tokens into equal thirds. The planner does more (stability order, edit rates, the
anchor DP, shard assignment). Reports the median of several runs, for a first plan and
for a replan after one edit (with the previous layout, as the engine does).

    .venv/bin/python bench/planning.py [--documents 10000] [--runs 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from corpus_cache.plan.layout import plan_corpus
from corpus_cache.plan.stability import DocInfo

NOW = 2_000_000_000.0


def corpus(count: int) -> list[DocInfo]:
    rng = random.Random(3)
    docs = []
    for i in range(count):
        age = rng.choice([rng.uniform(0, 3600), rng.uniform(2, 900) * 86_400])
        docs.append(
            DocInfo(
                f"{rng.choice(['a', 'b', 'c', 'd'])}/{i:05d}.md",
                rng.randint(50, 4_000),
                f"k{i}",
                NOW - age,
                edits=rng.choice([0, 0, 0, 1, 5]),
                first_seen=NOW - 86_400,
            )
        )
    return docs


def naive(docs: list[DocInfo]) -> list[list[str]]:
    ordered = sorted(docs, key=lambda d: d.path)
    total = sum(d.tokens for d in ordered)
    blocks: list[list[str]] = [[], [], []]
    running = 0
    for doc in ordered:
        running += doc.tokens
        blocks[min(2, running * 3 // (total + 1))].append(doc.path)
    return blocks


def median_seconds(work: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description="Planner speed.")
    parser.add_argument("--documents", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("bench/results/planning.json"))
    args = parser.parse_args()
    docs = corpus(args.documents)

    def first() -> object:
        return plan_corpus(
            docs, min_cacheable_tokens=1024, instructions_tokens=120,
            budget_tokens=984_000, now=NOW,
        )  # fmt: skip

    previous = plan_corpus(
        docs, min_cacheable_tokens=1024, instructions_tokens=120, budget_tokens=984_000, now=NOW
    )
    edited = [*docs]
    edited[1234] = dataclasses.replace(docs[1234], key="changed", last_change=NOW + 60, edits=1)

    def replan() -> object:
        return plan_corpus(
            edited, min_cacheable_tokens=1024, instructions_tokens=120,
            budget_tokens=984_000, now=NOW + 60, previous=previous,
        )  # fmt: skip

    baseline = median_seconds(lambda: naive(docs), args.runs)
    plan_s = median_seconds(first, args.runs)
    replan_s = median_seconds(replan, args.runs)
    result = {
        "documents": args.documents,
        "shards": len(previous.shards),
        "median_first_plan_seconds": round(plan_s, 4),
        "median_replan_seconds": round(replan_s, 4),
        "median_naive_layout_seconds": round(baseline, 4),
        "first_plan_vs_naive": round(plan_s / baseline, 1),
    }
    print(f"{args.documents} documents in {result['shards']} shard(s)")
    print(
        f"first plan:   median {plan_s * 1000:.0f} ms ({plan_s / baseline:.1f}x the naive layout)"
    )
    print(f"after an edit: median {replan_s * 1000:.0f} ms")
    print(f"naive layout (sort by path, thirds): median {baseline * 1000:.1f} ms")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
