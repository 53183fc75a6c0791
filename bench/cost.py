"""Dollars per strategy for one trace, replayed against the emulator on its virtual clock.

    .venv/bin/python bench/cost.py --corpus corpora/handbook --trace trace.jsonl \
        --model claude-sonnet-5-5 --json bench/results/cost.json

Each strategy answers the same questions over the same edits, in a fresh emulator
workspace and a fresh copy of the corpus whose files start a month old:
- uncached: the whole corpus with every question, no cache_control;
- single-block: the whole corpus behind one 5-minute breakpoint (the usual hand-written way);
- single-block-1h: the same with the 1-hour TTL;
- keep-warm-always: single-block, kept warm by a `max_tokens: 0` request every 4.5 minutes
  from the first question to the last;
- corpus-cache: the product's engine (planner, layout, TTL and keep-warm policy, request
  builder) as it runs, its keep-warm requests included;
- corpus-cache x2 (with --instances 2): two engines on one state folder and one key (two
  Claude Code windows on one project), the trace's questions alternating between them,
  each refreshing on every edit, the keeper elected between them alone keeping warm; its
  dollars are compared with corpus-cache's (docs/reliability.md, "Several windows on one folder").

The lower bound is computed, from the corpus-cache run's own token counts, as the exact
offline optimum of a relaxed problem, so no strategy can beat it: the whole prefix is one
cache entry, written at the first question and then either kept alive across each gap
(by keep-warm reads, with the 5-minute or the 1-hour TTL) or rewritten, whichever the
optimum prefers knowing every future gap (a dynamic program over the entry's TTL); every
question reads the prefix; and every edit or new file writes only that document's tokens,
at the cheaper 5-minute rate. The prefix is the corpus as it is: the old copies of edited
documents corpus-cache carries in its prefix are not in it. A live 5-minute entry may turn
into a 1-hour one at no cost (a request that reads it and writes a 1-hour breakpoint a few
tokens later pays for those tokens only), after one read if it was only just written.
"""

from __future__ import annotations

import argparse
import json
import math
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
from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.backend import Backend
from corpus_cache.api.request import INSTRUCTIONS, document_block
from corpus_cache.config import Settings
from corpus_cache.emulator import RunningEmulator, start_in_thread
from corpus_cache.engine.core import Engine
from corpus_cache.engine.keeper import Keeper
from corpus_cache.engine.warm import keep_warm_due, next_ping_at
from corpus_cache.models.catalog import ModelSpec, load_catalog
from corpus_cache.models.pricing import Usage, cost_usd
from traces import Event, load

T0 = 1_900_000_000.0  # the virtual start of every replay
MONTH = 30 * 86_400.0
STRATEGIES = ("uncached", "single-block", "single-block-1h", "keep-warm-always", "corpus-cache")
TWO_INSTANCES = "corpus-cache x2"
PING_EVERY = 270.0


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
    question_times: list[float] = field(default_factory=list)
    edit_tokens: list[int] = field(default_factory=list)
    # Tokens of edited documents' old copies in each question's prefix (corpus-cache keeps
    # them while their cached prefix lives); the bound's corpus does not hold them.
    superseded_tokens: list[int] = field(default_factory=list)
    keep_warm: int = 0  # keep-warm requests sent (corpus-cache)


def _fixed_request(engine: Engine, question: str, ttl: str | None) -> dict[str, Any]:
    """The whole corpus in path order, optionally behind one breakpoint."""
    docs = [document_block(d) for d in engine.current.snapshot.documents]
    if ttl is not None and docs:
        docs[-1]["cache_control"] = {"type": "ephemeral", "ttl": ttl}
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
    tier: str | None = None,
    instances: int = 1,
) -> Replay:
    """One strategy's run; corpus-cache's with `instances` engines on one state folder,
    the questions going to each in turn."""
    control = httpx2.Client(base_url=emulator.base_url)
    control.post("/_emulator/reset")
    control.post("/_emulator/clock", json={"frozen": True, "set": T0})
    root = workdir / strategy / "corpus"
    shutil.copytree(corpus, root)
    for path in root.rglob("*"):
        os.utime(path, (T0 - MONTH, T0 - MONTH))  # a settled folder: nothing recently edited
    now = [T0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    settings = Settings(
        corpus=root, state_dir=workdir / strategy / "state", model=model.id, tier=tier
    )
    ledgers = [Ledger(settings.ledger_path) for _ in range(instances)]
    client = AsyncAnthropic(base_url=emulator.base_url, api_key=f"bench-{strategy}", max_retries=0)

    async def wait(seconds: float) -> None:
        # A wait for the rate limits passes on the virtual clock, as the trace's time does.
        now[0] += seconds
        control.post("/_emulator/clock", json={"set": now[0]})

    engines = [
        Engine(
            settings, load_catalog(), Backend(client, "anthropic"), ledger, clock=clock, sleep=wait
        )
        for ledger in ledgers
    ]
    engine = engines[0]
    # Several instances elect one keeper through the state folder, as servers do
    # (engine/keeper.py); beaten here at the trace's instants rather than every second.
    keepers = (
        [Keeper(settings.ledger_path, e.corpus_key, clock) for e in engines]
        if instances > 1
        else []
    )
    for each, keeper in zip(engines, keepers, strict=False):  # none for one instance
        keeper.beat()
        each.keeper = keeper
    result = Replay()
    asked = 0
    fixed_ttl = {"single-block": "5m", "single-block-1h": "1h", "keep-warm-always": "5m"}
    last_request: float | None = None

    async def send(params: dict[str, Any]) -> Usage:
        message = await client.messages.create(**params)
        return Usage.from_api(message.usage)

    async def pings_until(until: float) -> None:
        nonlocal last_request
        if strategy.startswith("corpus-cache"):
            while True:
                keeping = [e for e in engines if e.keeps_cache()]  # the keeper, by a beat now
                if keepers:
                    for each in keeping:
                        each.catch_up()  # the others' questions, as keeping_warm does
                dues = [(due, e) for e in keeping if (due := next_ping_at(e)) is not None]
                if not dues or min(due for due, _ in dues) >= until:
                    break
                due = min(due for due, _ in dues)
                now[0] = due
                control.post("/_emulator/clock", json={"set": due})
                for _, pinging in [d for d in dues if d[0] <= due]:
                    for warmed in await keep_warm_due(pinging):
                        result.tally.add(warmed.usage, model)
                        result.keep_warm += 1
        elif strategy == "keep-warm-always" and last_request is not None:
            while last_request + PING_EVERY < until:
                last_request += PING_EVERY
                now[0] = last_request
                control.post("/_emulator/clock", json={"set": last_request})
                params = _fixed_request(engine, "(keep warm)", ttl="5m")
                result.tally.add(await send({**params, "max_tokens": 0}), model)

    try:
        for each in engines:
            await each.refresh()
        for event in events:
            await pings_until(T0 + event.t)
            now[0] = max(now[0], T0 + event.t)  # a wait for the limits may have run past it
            control.post("/_emulator/clock", json={"set": now[0]})
            if event.op != "ask":
                _apply(root, event, now[0])
                for each in engines[1:]:
                    await each.refresh()  # each instance watches the folder
                corpus_now = await engine.refresh()
                if event.op != "delete":
                    result.edit_tokens.append(corpus_now.tokens[event.path])
                continue
            if strategy.startswith("corpus-cache"):
                asking = engines[asked % len(engines)]
                asked += 1
                usage = (await asking.ask(event.question)).usage
                result.superseded_tokens.append(
                    sum(s.plan.superseded_tokens for s in asking.current.shards)
                )
            else:
                usage = await send(_fixed_request(engine, event.question, fixed_ttl.get(strategy)))
                last_request = now[0]
            result.tally.add(usage, model)
            result.tally.questions += 1
            result.question_usages.append(usage)
            result.question_times.append(event.t)
    finally:
        for keeper in keepers:
            keeper.release()
        await client.close()
        for ledger in ledgers:
            ledger.close()
        control.close()
    return result


def _keep_alive(gap: float, ttl: float) -> int:
    """Keep-warm reads needed to carry an entry of this TTL across a gap."""
    return max(0, math.ceil((gap - ttl) / ttl))


def lower_bound(observed: Replay, model: ModelSpec) -> Tally:
    """The exact offline optimum of the relaxed problem described at the top."""
    bound = Tally()
    read = model.cache_read_multiplier
    w5, w1 = model.cache_write_5m_multiplier, model.cache_write_1h_multiplier
    old_copies = observed.superseded_tokens or [0] * len(observed.question_usages)
    prefixes = [
        u.prompt_tokens - u.input_tokens - old
        for u, old in zip(observed.question_usages, old_copies, strict=True)
    ]
    # best[ttl]: least cost so far (in tokens at the input price) with the prefix's entry
    # of that TTL alive after this question.
    best = {"5m": w5 * prefixes[0], "1h": min(w1, w5 + read) * prefixes[0]} if prefixes else {}
    for i in range(1, len(prefixes)):
        gap = observed.question_times[i] - observed.question_times[i - 1]
        p = prefixes[i]
        carried = {
            "5m": best["5m"] + (_keep_alive(gap, 300.0) + 1) * read * p,
            "1h": best["1h"] + (_keep_alive(gap, 3600.0) + 1) * read * p,
        }
        cheapest = min(best.values())
        written_5m = cheapest + w5 * p
        best = {
            "5m": min(carried["5m"], written_5m),
            # A live 5-minute entry becomes a 1-hour one for the price of the few marker
            # tokens, at this question if it was alive before it, else at a read after.
            "1h": min(carried["1h"], cheapest + w1 * p, carried["5m"], written_5m + read * p),
        }
    input_price, _ = model.prices_at(prefixes[0] if prefixes else 0)
    bound.usd += (min(best.values()) if best else 0.0) * input_price * 1e-6
    for usage, prefix in zip(observed.question_usages, prefixes, strict=True):
        bound.add(Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens), model)
        bound.cache_read_tokens += prefix
    for tokens in observed.edit_tokens:
        bound.add(Usage(cache_write_5m_tokens=tokens), model)
    return bound


async def compare(
    corpus: Path,
    events: list[Event],
    model_id: str,
    tier: str | None = None,
    instances: int = 1,
    strategies: tuple[str, ...] = STRATEGIES,
) -> dict[str, Any]:
    """`instances` 2: corpus-cache's run again as two instances on one state folder."""
    model = load_catalog().get(model_id)
    results: dict[str, Tally] = {}
    keep_warm: dict[str, int] = {}
    runs = [*strategies, *([TWO_INSTANCES] if instances > 1 else [])]
    with start_in_thread(tier=tier) as emulator, tempfile.TemporaryDirectory() as tmp:
        for strategy in runs:
            many = instances if strategy == TWO_INSTANCES else 1
            run = await replay(strategy, corpus, events, model, emulator, Path(tmp), tier, many)
            results[strategy] = run.tally
            if strategy.startswith("corpus-cache"):
                keep_warm[strategy] = run.keep_warm
            if strategy == "corpus-cache":
                results["lower_bound"] = lower_bound(run, model)
    bound = results["lower_bound"].usd
    return {
        "keep_warm_requests": keep_warm,
        "model": model.id,
        "tier": tier or "none",
        "questions": results["corpus-cache"].questions,
        "edits": sum(1 for e in events if e.op != "ask"),
        "strategies": {
            name: {**tally.as_dict(), "vs_lower_bound": round(tally.usd / bound, 3)}
            for name, tally in results.items()
        },
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['questions']} questions, {report['edits']} edits, model {report['model']}, "
        f"rate limits: {'tier ' + report['tier'] if report['tier'] != 'none' else 'none'}",
        f"{'strategy':14}{'dollars':>10}{'x bound':>9}{'input':>10}{'read':>12}"
        f"{'written':>11}{'output':>9}",
    ]
    for name, s in report["strategies"].items():
        lines.append(
            f"{name:14}{s['usd']:>10.4f}{s['vs_lower_bound']:>9.3f}{s['input_tokens']:>10,}"
            f"{s['cache_read_tokens']:>12,}{s['cache_write_tokens']:>11,}{s['output_tokens']:>9,}"
        )
    strategies = report["strategies"]
    cc = strategies["corpus-cache"]["usd"]
    fixed = {
        k: v["usd"]
        for k, v in strategies.items()
        if not k.startswith("corpus-cache") and k != "lower_bound"
    }
    if "single-block" in fixed:
        best = min(fixed, key=fixed.__getitem__)
        lines.append(
            f"single-block / corpus-cache: {strategies['single-block']['usd'] / cc:.2f}x; "
            f"best fixed strategy: {best} (${fixed[best]:.4f}, {fixed[best] / cc:.2f}x "
            "corpus-cache)"
        )
    if TWO_INSTANCES in strategies:
        two = strategies[TWO_INSTANCES]["usd"]
        pings = report["keep_warm_requests"]
        lines.append(
            f"two instances on one state folder: ${two:.4f} vs ${cc:.4f} for one, ratio "
            f"{two / cc:.4f}; keep-warm requests {pings[TWO_INSTANCES]} vs {pings['corpus-cache']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("corpora/handbook"))
    parser.add_argument("--trace", type=Path, required=True)
    parser.add_argument("--model", default="claude-sonnet-5-5")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--tier",
        help="replay under the rate limits of this usage tier (the emulator applies them, "
        "corpus-cache knows them from --tier and waits on the virtual clock; the fixed "
        "strategies are sent as they are, so a tier whose limits they exceed fails them: "
        "tier 2 and up on the handbook); default: none",
    )
    parser.add_argument(
        "--instances",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: replay corpus-cache's run again as two instances on one state folder, the "
        "questions alternating between them, and print both and the ratio",
    )
    parser.add_argument(
        "--only-corpus-cache",
        action="store_true",
        help="leave out the fixed strategies (the lower bound is still computed)",
    )
    args = parser.parse_args()
    strategies = ("corpus-cache",) if args.only_corpus_cache else STRATEGIES
    report = anyio.run(
        compare, args.corpus, load(args.trace), args.model, args.tier, args.instances, strategies
    )
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
