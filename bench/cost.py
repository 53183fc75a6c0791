"""Dollars per strategy for one trace, replayed against the emulator on its virtual clock.

    .venv/bin/python bench/cost.py --corpus corpora/handbook --trace trace.jsonl \
        --model claude-sonnet-5-5 --json bench/results/cost.json

Each strategy answers the same questions over the same edits, in a fresh emulator
workspace and a fresh copy of the corpus whose files start a month old:
- uncached: the whole corpus with every question, no cache_control;
- single-block: the whole corpus behind one 5-minute breakpoint (the usual hand-written way);
- corpus-cache: the product's engine (planner, layout, request builder) as it runs.
The lower bound is what no strategy can beat: every question reads its whole prefix from
the cache, the first question writes it once, and every edit or new file writes only that
document's tokens. It is computed from the corpus-cache run's own token counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anthropic import AsyncAnthropic

sys.path.insert(0, str(Path(__file__).parent))
from corpus_cache.backend import Backend
from corpus_cache.catalog import ModelSpec, load_catalog
from corpus_cache.config import Settings
from corpus_cache.emulator import RunningEmulator, start_in_thread
from corpus_cache.engine import Engine
from corpus_cache.ledger import Ledger
from corpus_cache.pricing import Usage, cost_usd
from corpus_cache.request import INSTRUCTIONS, document_block
from traces import Event, load

T0 = 1_900_000_000.0  # the virtual start of every replay
MONTH = 30 * 86_400.0
STRATEGIES = ("uncached", "single-block", "corpus-cache")


@dataclass
class Tally:
    usd: float = 0.0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    questions: int = 0

    def add(self, usage: Usage, model: ModelSpec) -> None:
        self.usd += cost_usd(usage, model)
        self.input_tokens += usage.input_tokens
        self.cache_read_tokens += usage.cache_read_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        self.output_tokens += usage.output_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "usd": round(self.usd, 6),
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass
class Replay:
    """What one strategy's run observed, for the lower bound."""

    tally: Tally = field(default_factory=Tally)
    question_usages: list[Usage] = field(default_factory=list)
    edit_tokens: list[int] = field(default_factory=list)


def _fixed_request(engine: Engine, question: str, cached: bool) -> dict[str, Any]:
    """The whole corpus in path order, optionally behind one breakpoint."""
    docs = [document_block(d) for d in engine.current.snapshot.documents]
    if cached and docs:
        docs[-1]["cache_control"] = {"type": "ephemeral"}
    return {
        "model": engine.model.id,
        "max_tokens": engine.settings.max_answer_tokens,
        "system": [{"type": "text", "text": INSTRUCTIONS}],
        "messages": [{"role": "user", "content": [*docs, {"type": "text", "text": question}]}],
    }


def _apply(root: Path, event: Event, at: float) -> None:
    path = root / event.path
    if event.op == "delete":
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(event.text)
    os.utime(path, (at, at))


async def replay(
    strategy: str,
    corpus: Path,
    events: list[Event],
    model: ModelSpec,
    emulator: RunningEmulator,
    workdir: Path,
) -> Replay:
    control = httpx2.Client(base_url=emulator.base_url)
    control.post("/_emulator/reset")
    control.post("/_emulator/clock", json={"frozen": True, "set": T0})
    root = workdir / strategy / "corpus"
    shutil.copytree(corpus, root)
    for path in root.rglob("*"):
        os.utime(path, (T0 - MONTH, T0 - MONTH))  # a settled folder: nothing recently edited
    now = [T0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    settings = Settings(corpus=root, state_dir=workdir / strategy / "state", model=model.id)
    ledger = Ledger(settings.ledger_path)
    client = AsyncAnthropic(base_url=emulator.base_url, api_key=f"bench-{strategy}", max_retries=0)
    engine = Engine(settings, load_catalog(), Backend(client, "anthropic"), ledger, clock=clock)
    result = Replay()
    try:
        await engine.refresh()
        for event in events:
            now[0] = T0 + event.t
            control.post("/_emulator/clock", json={"set": now[0]})
            if event.op != "ask":
                _apply(root, event, now[0])
                corpus_now = await engine.refresh()
                if event.op != "delete":
                    result.edit_tokens.append(corpus_now.tokens[event.path])
                continue
            if strategy == "corpus-cache":
                usage = (await engine.ask(event.question)).usage
            else:
                params = _fixed_request(engine, event.question, cached=strategy == "single-block")
                message = await client.messages.create(**params)
                usage = Usage.from_api(message.usage)
            result.tally.add(usage, model)
            result.tally.questions += 1
            result.question_usages.append(usage)
    finally:
        await client.close()
        ledger.close()
        control.close()
    return result


def lower_bound(observed: Replay, model: ModelSpec) -> Tally:
    """Reads for every question, one write of the corpus, one write per edited document."""
    bound = Tally()
    for number, usage in enumerate(observed.question_usages):
        prefix = usage.prompt_tokens - usage.input_tokens
        if number == 0:
            first = Usage(usage.input_tokens, 0, prefix, 0, usage.output_tokens)
            bound.add(first, model)
        else:
            bound.add(Usage(usage.input_tokens, prefix, 0, 0, usage.output_tokens), model)
    for tokens in observed.edit_tokens:
        bound.add(Usage(cache_write_5m_tokens=tokens), model)
    return bound


async def compare(corpus: Path, events: list[Event], model_id: str) -> dict[str, Any]:
    model = load_catalog().get(model_id)
    results: dict[str, Tally] = {}
    with start_in_thread() as emulator, tempfile.TemporaryDirectory() as tmp:
        for strategy in STRATEGIES:
            run = await replay(strategy, corpus, events, model, emulator, Path(tmp))
            results[strategy] = run.tally
            if strategy == "corpus-cache":
                results["lower_bound"] = lower_bound(run, model)
    bound = results["lower_bound"].usd
    return {
        "model": model.id,
        "questions": results["corpus-cache"].questions,
        "edits": sum(1 for e in events if e.op != "ask"),
        "strategies": {
            name: {**tally.as_dict(), "vs_lower_bound": round(tally.usd / bound, 3)}
            for name, tally in results.items()
        },
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['questions']} questions, {report['edits']} edits, model {report['model']}",
        f"{'strategy':14}{'dollars':>10}{'x bound':>9}{'input':>10}{'read':>12}"
        f"{'written':>11}{'output':>9}",
    ]
    for name, s in report["strategies"].items():
        lines.append(
            f"{name:14}{s['usd']:>10.4f}{s['vs_lower_bound']:>9.3f}{s['input_tokens']:>10,}"
            f"{s['cache_read_tokens']:>12,}{s['cache_write_tokens']:>11,}{s['output_tokens']:>9,}"
        )
    cc = report["strategies"]["corpus-cache"]["usd"]
    single = report["strategies"]["single-block"]["usd"]
    lines.append(f"single-block / corpus-cache: {single / cc:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("corpora/handbook"))
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--model", default="claude-sonnet-5-5")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = anyio.run(compare, args.corpus, load(args.trace), args.model)
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
