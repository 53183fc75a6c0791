"""Routing recall on a corpus larger than the context window.

Generates a corpus of at least 2M tokens (over the 1M window of the default model), so
it is split into shards; plants a phrase unique to each document; asks, for every
document, a question built from its phrase, and checks whether routing picks the shard
that holds it first (recall@1) or among the first two (recall@2). Routing is local BM25:
no answer is requested, so this costs nothing.

    .venv/bin/python bench/routing.py [--documents 600] [--json bench/results/routing.json]

With `--folder PATH`, a held-out check on real documents instead (Django's docs: `pip
download --no-deps --no-binary :all: django`, then its `docs/`): `--questions` documents
drawn with a fixed seed, each asked about one of its section headings (reStructuredText
or Markdown, three words or more, not its title), and routing must pick the shard that
holds that document. Shards as the default budget makes them, or `--budget-tokens`, or
`--itpm` (a known input-token limit, which bounds them too):

    .venv/bin/python bench/routing.py --folder /tmp/django/docs --questions 40
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import anyio
from anthropic import AsyncAnthropic

sys.path.insert(0, str(Path(__file__).parent))
import itertools

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.backend import Backend
from corpus_cache.api.ratelimits import RateLimits
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


UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")


def headings(text: str) -> list[str]:
    """Section titles: reStructuredText's (a line underlined) and Markdown's (#)."""
    lines = text.splitlines()
    found = []
    for above, line in itertools.pairwise(lines):
        title = above.strip()
        if (
            UNDERLINE.match(line)
            and title
            and not UNDERLINE.match(above)
            and len(line.strip()) >= len(title)
        ):
            found.append(title)
    found += [line.lstrip("#").strip() for line in lines if re.match(r"^#{1,6} ", line)]
    return found


def held_out(folder: Path, count: int, rng: random.Random) -> dict[str, tuple[str, str]]:
    """Path -> a question about one of its section headings, and the heading, for `count`
    documents."""
    candidates = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix in (".txt", ".rst", ".md")):
        titles = headings(path.read_text(encoding="utf-8", errors="replace"))
        usable = [t for t in titles[1:] if len(re.findall(r"[A-Za-z]+", t)) >= 3]
        if usable:
            candidates.append((path.relative_to(folder).as_posix(), usable))
    chosen = rng.sample(candidates, min(count, len(candidates)))
    asked = {}
    for rel, titles in chosen:
        heading = rng.choice(titles)
        asked[rel] = (f"What does the documentation say about {heading}?", heading)
    return asked


async def measure_folder(
    folder: Path, count: int, budget: int | None, itpm: int | None
) -> dict[str, object]:
    questions = held_out(folder, count, random.Random(18))
    with start_in_thread() as emulator, tempfile.TemporaryDirectory() as tmp:
        options: dict[str, object] = {"budget_tokens": budget} if budget else {}
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
        at1 = at2 = 0
        misses = []
        for path, (question, heading) in questions.items():
            # Right: a shard holding the document, or another holding the heading's words
            # verbatim (security releases repeat one text across versions).
            holding = {shard_of[path]} | {
                shard_of[d.path]
                for d in corpus.snapshot.documents
                if d.path in shard_of and heading.lower() in d.text.lower()
            }
            ranked = [s.number for s in engine.route(question, corpus, fan_out=2)]
            at1 += ranked[0] in holding
            at2 += bool(holding & set(ranked[:2]))
            if ranked[0] not in holding:
                misses.append(f"{path}: {question}")
        await client.close()
        ledger.close()
    return {
        "folder": str(folder),
        "documents": len(corpus.snapshot.documents),
        "corpus_tokens": corpus.corpus_tokens,
        "budget_tokens": corpus.layout.budget_tokens,
        "shards": len(corpus.shards),
        "questions": len(questions),
        "right_at_1": at1,
        "right_at_2": at2,
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
    args = parser.parse_args()
    if args.folder:
        found = anyio.run(
            measure_folder, args.folder, args.questions, args.budget_tokens, args.itpm
        )
        print(
            f"{found['documents']} documents, {found['corpus_tokens']:,} tokens, budget "
            f"{found['budget_tokens']:,}: {found['shards']} shards; routed right "
            f"{found['right_at_1']}/{found['questions']} (in the best two: "
            f"{found['right_at_2']}/{found['questions']})"
        )
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
