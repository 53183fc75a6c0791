"""How much time the emulator adds to a request carrying 200k tokens of cached documents.

Sends the same 200k-token document prefix (cache hits after the first request) with a
different question each time, through the real SDK over loopback, and compares the time
the emulator spends on a request (its own measurement, from body received to response
ready) with the total time of the SDK call measured by the client in the same run. The
emulator applies the rate limits of a usage tier (4 by default: the lowest whose input
limit admits the 200k-token write; `--tier none` for none), so their cost is measured too.

    .venv/bin/python bench/emulator_overhead.py [--requests 30] [--tier 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2

sys.path.insert(0, str(Path(__file__).parent))
from corpus_cache.emulator import start_in_thread
from synthetic import document

MODEL = "claude-sonnet-4-6"
TARGET_TOKENS = 200_000


def build_documents(client: anthropic.Anthropic) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for i in range(40):
        docs.append(
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": document(i, 292)},
                "title": f"doc-{i:02d}.md",
                "citations": {"enabled": True},
            }
        )
    for index in (13, 26, 39):  # three breakpoints, one left for a conversation
        docs[index]["cache_control"] = {"type": "ephemeral"}
    tokens = client.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": docs}]
    ).input_tokens
    assert abs(tokens - TARGET_TOKENS) < TARGET_TOKENS * 0.1, tokens
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--tier", default="4", help="a tier of the limits table, or none")
    parser.add_argument("--json", type=Path, default=Path("bench/results/emulator_overhead.json"))
    args = parser.parse_args()

    tier = None if args.tier == "none" else args.tier
    with start_in_thread(tier=tier) as emulator:
        client = anthropic.Anthropic(base_url=emulator.base_url, api_key="bench", max_retries=0)
        docs = build_documents(client)
        questions = [
            f"When does the urgent shipment {n} get rerouted?" for n in range(args.requests + 1)
        ]

        def ask(question: str) -> tuple[float, anthropic.types.Message]:
            content = [*docs, {"type": "text", "text": question}]
            started = time.perf_counter()
            raw = client.messages.with_raw_response.create(
                model=MODEL, max_tokens=400, messages=[{"role": "user", "content": content}]
            )
            message = raw.parse()
            elapsed = time.perf_counter() - started
            if tier is not None:
                assert raw.headers["anthropic-ratelimit-requests-limit"], "limits are on"
            return elapsed, message

        _, first = ask(questions[0])  # writes the cache
        totals: dict[str, float] = {}
        reads = 0
        for question in questions[1:]:
            elapsed, message = ask(question)
            totals[message.id] = elapsed
            reads += message.usage.cache_read_input_tokens or 0
        log = httpx2.get(f"{emulator.base_url}/_emulator/log", params={"limit": "1000"}).json()
        emulator_time = {
            e["id"]: e["emulator_seconds"] for e in log["requests"] if e["id"] in totals
        }
        prompt_tokens = (first.usage.cache_creation_input_tokens or 0) + first.usage.input_tokens

    median_total = statistics.median(totals.values())
    median_emulator = statistics.median(emulator_time.values())
    ratio = median_emulator / median_total
    result = {
        "tier": tier,
        "requests": len(totals),
        "prompt_tokens": prompt_tokens,
        "cache_read_tokens_per_request": reads // len(totals),
        "median_sdk_call_seconds": round(median_total, 4),
        "median_emulator_seconds": round(median_emulator, 4),
        "emulator_share_of_call": round(ratio, 3),
    }
    print(f"rate limits: {f'tier {tier}' if tier is not None else 'none'}")
    print(
        f"prompt: {prompt_tokens} tokens, {result['cache_read_tokens_per_request']} read from cache"
    )
    print(f"median SDK call (baseline, whole round trip): {median_total * 1000:.1f} ms")
    print(f"median time inside the emulator:               {median_emulator * 1000:.1f} ms")
    print(f"emulator / SDK call: {ratio:.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
