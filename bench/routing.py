"""Routing recall on a corpus larger than the context window.

Generates a corpus of at least 2M tokens (over the 1M window of the default model), so
it is split into shards; plants a phrase unique to each document; asks, for every
document, a question built from its phrase, and checks whether routing picks the shard
that holds it first (recall@1) or among the first two (recall@2). Routing is local BM25:
no answer is requested, so this costs nothing.

    .venv/bin/python bench/routing.py [--documents 600] [--json bench/results/routing.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import anyio
from anthropic import AsyncAnthropic

sys.path.insert(0, str(Path(__file__).parent))
from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.backend import Backend
from corpus_cache.config import Settings
from corpus_cache.emulator import start_in_thread
from corpus_cache.engine.core import Engine
from corpus_cache.models.catalog import load_catalog
from synthetic import document

SYLLABLES = "ka lo mi ru te vo zan pel dri osk umb ferr glo".split()


def codename(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3)) + str(rng.randint(10, 99))


def write_corpus(root: Path, count: int, rng: random.Random) -> dict[str, str]:
    """Documents of about 3,500 tokens in a few folders; returns path -> unique phrase."""
    phrases: dict[str, str] = {}
    for i in range(count):
        rel = f"{['ops', 'sales', 'eng', 'legal', 'hr'][i % 5]}/doc{i:04d}.md"
        name, place = codename(rng), codename(rng)
        phrase = f"consignment {name} is stored at depot {place}"
        body = document(i, 200)
        cut = len(body) // 2
        text = f"# Document {i}\n\n{body[:cut]} The {phrase}.\n{body[cut:]}\n"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        phrases[rel] = f"Where is consignment {name} stored?"
    return phrases


async def measure(count: int) -> dict[str, object]:
    rng = random.Random(11)
    with start_in_thread() as emulator, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        questions = write_corpus(root, count, rng)
        settings = Settings(corpus=root, state_dir=Path(tmp) / "state")
        ledger = Ledger(settings.ledger_path)
        client = AsyncAnthropic(base_url=emulator.base_url, api_key="bench", max_retries=0)
        engine = Engine(settings, load_catalog(), Backend(client, "anthropic"), ledger)
        started = time.perf_counter()
        corpus = await engine.refresh()
        indexed = time.perf_counter() - started
        shard_of = corpus.layout.shard_of()
        at1 = at2 = 0
        started = time.perf_counter()
        for path, question in questions.items():
            ranked = [s.number for s in engine.route(question, corpus, fan_out=2)]
            at1 += ranked[0] == shard_of[path]
            at2 += shard_of[path] in ranked[:2]
        routing = (time.perf_counter() - started) / len(questions)
        await client.close()
        ledger.close()
    return {
        "documents": count,
        "corpus_tokens": corpus.corpus_tokens,
        "context_window": engine.model.context_window,
        "budget_tokens": corpus.layout.budget_tokens,
        "shards": len(corpus.shards),
        "recall_at_1": round(at1 / len(questions), 4),
        "recall_at_2": round(at2 / len(questions), 4),
        "mean_route_ms": round(routing * 1000, 3),
        "index_seconds": round(indexed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Routing recall over shards.")
    parser.add_argument("--documents", type=int, default=600)
    parser.add_argument("--json", type=Path, default=Path("bench/results/routing.json"))
    args = parser.parse_args()
    result = anyio.run(measure, args.documents)
    print(
        f"{result['documents']} documents, {result['corpus_tokens']:,} tokens "
        f"(window {result['context_window']:,}, budget {result['budget_tokens']:,}): "
        f"{result['shards']} shards"
    )
    print(f"recall@1 {result['recall_at_1']:.1%}, recall@2 {result['recall_at_2']:.1%}")
    print(f"routing a question: {result['mean_route_ms']} ms on average")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
