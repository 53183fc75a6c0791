"""Routing recall on a corpus larger than the context window.

Generates a corpus of at least 2M tokens (over the 1M window of the default model), so
it is split into shards; plants a phrase unique to each document; asks, for every
document, a question built from its phrase, and checks whether routing picks the shard
that holds it first (recall@1) or among the first two (recall@2). Routing is local BM25:
no answer is requested, so this costs nothing.

    .venv/bin/python bench/routing.py [--documents 600] [--json bench/results/routing.json]

With `--folder PATH`, a held-out check on real documents instead (Django's docs: `pip
download --no-deps --no-binary :all: django`, then its `docs/`): questions about
`--questions` documents drawn with `--seed` (18), of three kinds (bench/questions.py: a
section heading verbatim, the heading paraphrased, words of a body sentence; `--kinds` to
choose), `--per-document` each, and routing must pick a shard holding that document (or
the heading or sentence verbatim). `--half tune` or `--half test` asks only about one half
of the documents, split by a hash of the path: tune on one, report on the other. Shards as
the default budget makes them (for a corpus over the window, a warm question of $0.05), or
`--budget-tokens`, `--warm-question-usd` (0: the window's shards), or `--itpm` (a known
input-token limit per minute). Beside right first and right in the best two, it
says what a question with `fan_out` left out asks (one shard, or two when the routing is
unsure): how often a right one is among them, and how many shards and tokens it reads:

    .venv/bin/python bench/routing.py --folder /tmp/django/docs --half test --questions 1000 \
        --per-document 2                       # add --warm-question-usd 0 for the window's
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
from corpus_cache.api.ratelimits import RateLimits
from corpus_cache.config import Settings
from corpus_cache.emulator import start_in_thread
from corpus_cache.engine.core import Engine
from corpus_cache.models.catalog import load_catalog
from corpus_cache.plan.budget import window_budget
from questions import KINDS, Question, generate, normalized
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


async def measure_folder(
    folder: Path,
    questions: list[Question],
    budget: int | None,
    itpm: int | None,
    warm_question_usd: float | None,
) -> dict[str, object]:
    with start_in_thread() as emulator, tempfile.TemporaryDirectory() as tmp:
        options: dict[str, object] = {"budget_tokens": budget} if budget else {}
        if warm_question_usd is not None:
            options["warm_question_usd"] = warm_question_usd
        settings = Settings(corpus=folder, state_dir=Path(tmp) / "state", **options)
        ledger = Ledger(settings.ledger_path)
        client = AsyncAnthropic(base_url=emulator.base_url, api_key="bench", max_retries=0)
        engine = Engine(settings, load_catalog(), Backend(client, "anthropic"), ledger)
        if itpm is not None:
            engine.caller.limits = RateLimits.from_figures(
                rpm=10_000, itpm=itpm, otpm=1_000_000, now=0.0, source="--itpm"
            )
        corpus = await engine.refresh()
        shard_of = corpus.layout.shard_of()
        started = time.perf_counter()
        engine.route("index", corpus, fan_out=2)  # the index is built on the first search
        index_seconds = time.perf_counter() - started
        texts = {d.path: normalized(d.text) for d in corpus.snapshot.documents}
        by_kind: dict[str, list[int]] = {}
        misses = []
        routing = 0.0
        read = 0
        for q in questions:
            # Right: a shard holding the document, or another holding the evidence verbatim
            # (security releases repeat one text across versions).
            holding = {shard_of[q.path]} | {
                shard_of[path]
                for path, text in texts.items()
                if path in shard_of and q.evidence in text
            }
            started = time.perf_counter()
            ranked = [s.number for s in engine.route(q.text, corpus, fan_out=2)]
            routing += time.perf_counter() - started
            # What a question with fan_out left out asks: one shard, or two when unsure.
            asked = engine.route(q.text, corpus, None)
            read += sum(s.corpus_tokens for s in asked)
            counts = by_kind.setdefault(q.kind, [0, 0, 0, 0, 0])
            counts[0] += ranked[0] in holding
            counts[1] += bool(holding & set(ranked[:2]))
            counts[2] += 1
            counts[3] += bool(holding & {s.number for s in asked})
            counts[4] += len(asked)
            if ranked[0] not in holding:
                misses.append(f"{q.path} ({q.kind}): {q.text}")
        await client.close()
        ledger.close()
    return {
        "folder": str(folder),
        "documents": len(corpus.snapshot.documents),
        "corpus_tokens": corpus.corpus_tokens,
        "budget_tokens": corpus.layout.budget_tokens,
        "shards": len(corpus.shards),
        "questions": len(questions),
        "right_at_1": sum(c[0] for c in by_kind.values()),
        "right_at_2": sum(c[1] for c in by_kind.values()),
        "right_asked": sum(c[3] for c in by_kind.values()),
        "shards_asked": round(sum(c[4] for c in by_kind.values()) / max(1, len(questions)), 3),
        "tokens_read": round(read / max(1, len(questions))),
        "window_tokens": window_budget(engine.model, settings.reserve_tokens),
        "by_kind": by_kind,
        "mean_route_ms": round(routing / max(1, len(questions)) * 1000, 3),
        "index_seconds": round(index_seconds, 2),
        "misses": misses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Routing recall over shards.")
    parser.add_argument("--documents", type=int, default=600)
    parser.add_argument("--json", type=Path, default=Path("bench/results/routing.json"))
    parser.add_argument("--folder", type=Path, help="a held-out check on this folder instead")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--budget-tokens", type=int)
    parser.add_argument("--itpm", type=int, help="a known input-token limit per minute")
    parser.add_argument("--warm-question-usd", type=float)
    parser.add_argument("--seed", type=int, default=18, help="which documents are asked about")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"question kinds, of {', '.join(KINDS)}"
    )
    parser.add_argument(
        "--half",
        choices=("all", "tune", "test"),
        default="all",
        help="ask only about one half of the documents (split by a hash of the path)",
    )
    parser.add_argument(
        "--per-document", type=int, default=1, help="questions per document, on its headings"
    )
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()
    if args.folder:
        kinds = tuple(k for k in args.kinds.split(",") if k)
        asked = generate(
            args.folder, args.questions, args.seed, kinds, args.half, args.per_document
        )
        found = anyio.run(
            measure_folder,
            args.folder,
            asked,
            args.budget_tokens,
            args.itpm,
            args.warm_question_usd,
        )
        print(
            f"{found['documents']} documents, {found['corpus_tokens']:,} tokens, budget "
            f"{found['budget_tokens']:,}: {found['shards']} shards; routed right "
            f"{found['right_at_1']}/{found['questions']} (in the best two: "
            f"{found['right_at_2']}/{found['questions']}); "
            f"{found['mean_route_ms']} ms a question, index built in {found['index_seconds']} s"
        )
        print(
            f"  asked with fan_out left out (one shard, two when unsure): a right one in "
            f"{found['right_asked']}/{found['questions']}, {found['shards_asked']} shards and "
            f"{found['tokens_read']:,} tokens a question (one shard of the window: "
            f"{found['window_tokens']:,})"
        )
        for kind, (at1, at2, n, asked, _) in found["by_kind"].items():  # type: ignore[attr-defined]
            print(f"  {kind}: {at1}/{n} (in the best two: {at2}/{n}; asked: {asked}/{n})")
        if args.show_misses:
            for miss in found["misses"]:  # type: ignore[attr-defined]
                print(f"  missed {miss}")
        return
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
