"""Works at every tier: the handbook, a generated folder of about 400k tokens and one of
10,000 files, at usage tiers 1, 2 and 4 and with no limits, with realistic latency.

    .venv/bin/python bench/tiers.py --json bench/results/tiers.json
    .venv/bin/python bench/tiers.py --quick --corpus handbook --tier 1 --tier 4

For each corpus and tier it measures:
- `initialize`: `corpus-cache serve` started as a subprocess over stdio, with a real MCP
  client (bench/startup.py), against an emulator at that tier; seconds from the process's
  start to `initialize` answered, in real time (nothing is scaled);
- then, in this process, the engine as `serve` runs it (first index in the background,
  staged builds in the builder's task group, answers given up at the deadline read to
  their end, the one caller and its scheduler), asked the
  way a patient MCP client asks: each question under the client's deadline (50 s), asked
  again when the server says to come back later (indexing, a cache build, the rate
  limits), until ten questions have cited answers. The MCP layer in between is left out:
  it adds nothing measurable to these times, and its deadline runs on real time, which a
  time-scaled run cannot share. Figures: seconds from start to the first cited answer,
  `count_tokens` calls, 429s received (after the SDK's own retries, as in production),
  "come back later" answers, questions that ended in a rate-limit error, dollars for the
  first ten questions (everything sent meanwhile: builds, warming), and the share of each
  later question's prompt read from the cache (the lowest of questions 2 to 10);
- beside it, the single-block baseline: one request with the whole corpus and no
  cache_control, which fails at tier 1 for anything over the input-token limit.

Time scaling: the emulator runs with `--latency realistic --time-scale F` (latencies
divided by F, and its buckets refilling F times as fast: docs/emulator.md), and the engine
runs on a clock F times as fast as real time (its waits for the buckets take 1/F of the
time), so the figures are in the API's seconds: real seconds x F. The emulator's cache
entries lapse F times as fast too, so an entry lives 5 minutes (or an hour) of the API's
time, as the engine, on its own clock, believes. What is not scaled is CPU time: building,
sending and accounting a request of a million tokens takes real seconds, F times as many of
the API's; on a busy machine the 10,000-file folder wants a smaller --time-scale.

Targets (issue 18) are printed beside the figures; many depend on work that landed on main
at different times, so the figures are whatever this checkout does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anthropic import AsyncAnthropic

sys.path.insert(0, str(Path(__file__).parent))
from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.backend import API_RETRIES, Backend
from corpus_cache.config import Settings
from corpus_cache.emulator import RunningEmulator, start_in_thread
from corpus_cache.engine.core import Engine
from corpus_cache.engine.runtime import first_index
from corpus_cache.errors import (
    BeyondRateLimitError,
    CacheBuildingError,
    CorpusCacheError,
    RateLimitWaitError,
)
from corpus_cache.models.catalog import load_catalog
from corpus_cache.models.pricing import Usage, cost_usd
from startup import _compile, _serve_once, _server_env
from synthetic import document, write_folder

MODEL = "claude-sonnet-5-5"
DEADLINE = 50.0  # the client's, in the API's seconds (the default --ask-deadline)
HANDBOOK = Path(__file__).parents[1] / "corpora" / "handbook"
# The emulator's tier; corpus-cache is told it with --tier, except in the "-no-tier" runs,
# where it learns the limits itself, as most users' servers must.
TIERS: dict[str, int | None] = {
    "1": 1, "2": 2, "4": 4, "none": None, "1-no-tier": 1, "4-no-tier": 4,
}  # fmt: skip
# How long the run may take, in the API's seconds, before a corpus is called unanswered,
# and how many attempts in a row may run past the client's deadline.
GIVE_UP = 3600.0
PAST_DEADLINE = 6

TARGETS = {
    "initialize_s": "< 1 s",
    "first_answer_s": "handbook: <= 180 s at tier 1, <= 30 s at tier 4",
    "count_tokens": "<= 25 on the 10,000-file folder",
    "rate_limit_errors": "0 (every corpus answers at every tier)",
    "cached_share": ">= 95% after the build",
}


class ScaledClock:
    """The engine's clock and sleep, `scale` times as fast as real time."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._origin = time.time()
        self._started = time.monotonic()

    def now(self) -> float:
        return self._origin + (time.monotonic() - self._started) * self.scale

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self.scale)

    def elapsed(self) -> float:
        return (time.monotonic() - self._started) * self.scale


@dataclass
class Run:
    corpus: str
    tier: str
    documents: int = 0
    corpus_tokens: int = 0
    initialize_s: float | None = None
    first_answer_s: float | None = None
    answered: int = 0
    count_tokens: int = 0
    messages: int = 0
    status_429: int = 0
    come_back_later: int = 0
    rate_limit_errors: int = 0
    other_errors: list[str] = field(default_factory=list)
    usd_ten: float | None = None
    cached_share_min: float | None = None
    baseline: dict[str, Any] = field(default_factory=dict)


def told(tier: str) -> str | None:
    """The --tier corpus-cache is given in the run named `tier`."""
    emulated = TIERS[tier]
    return None if emulated is None or tier.endswith("-no-tier") else str(emulated)


def questions_for(name: str, folder: Path, count: int) -> list[str]:
    if name == "handbook":
        facts = json.loads((HANDBOOK.parent / "handbook.facts.json").read_text())
        return [f["question"] for f in facts[:count]]
    # A sentence of a generated document, turned into a question about its subject.
    notes = sorted(folder.rglob("*.md"))
    step = max(1, len(notes) // count)
    asked = []
    for path in notes[::step][:count]:
        words = path.read_text().split(".")[0].split()
        asked.append(f"Which {' '.join(words[2:4])} {' '.join(words[4:6])}?")
    return asked


def corpora(tmp: Path, chosen: list[str]) -> dict[str, Path]:
    made: dict[str, Path] = {}
    for name in chosen:
        if name == "handbook":
            made[name] = HANDBOOK
        elif name == "400k":
            folder = tmp / "generated-400k"
            for n in range(400):  # about 1,000 tokens each with the 5.x tokenizer
                part = folder / f"part-{n // 50:02d}"
                part.mkdir(parents=True, exist_ok=True)
                (part / f"chapter-{n:03d}.md").write_text(
                    f"# Chapter {n}\n\n{document(7_000 + n, 40)}\n", encoding="utf-8"
                )
            made[name] = folder
        elif name == "10k":
            made[name] = write_folder(tmp / "generated-10k", 10_000)  # about 1.6M tokens
    return made


def counting_client(base_url: str, tally: Counter[tuple[str, int]]) -> AsyncAnthropic:
    async def note(response: httpx2.Response) -> None:
        tally[(response.request.url.path, response.status_code)] += 1

    http = httpx2.AsyncClient(event_hooks={"response": [note]}, timeout=600)
    return AsyncAnthropic(
        base_url=base_url, api_key="bench-tiers", max_retries=API_RETRIES, http_client=http
    )


async def ask_patiently(
    engine: Engine, question: str, clock: ScaledClock, run: Run
) -> tuple[Any, float] | None:
    """Ask as an MCP client would, under the deadline, again when told to come back."""
    late = 0
    while clock.elapsed() < GIVE_UP:
        if not engine.indexed:
            with anyio.move_on_after(DEADLINE / clock.scale):
                await engine.indexing.done.wait()
            if not engine.indexed:
                run.come_back_later += 1
                continue
        began = clock.elapsed()
        come_back: float | None = None
        with anyio.move_on_after(DEADLINE / clock.scale):
            try:
                return await engine.ask(question, patience=DEADLINE), clock.elapsed() - began
            except (CacheBuildingError, RateLimitWaitError) as later:
                run.come_back_later += 1
                come_back = getattr(later, "retry_after", None) or getattr(
                    later, "wait_seconds", 30.0
                )
            except BeyondRateLimitError as refused:
                run.rate_limit_errors += 1
                run.other_errors.append(str(refused)[:160])
                return None
            except CorpusCacheError as failed:
                text = str(failed)
                if "429" in text or "rate-limit" in text or "rate limit" in text:
                    run.rate_limit_errors += 1
                run.other_errors.append(text[:160])
                return None
        if come_back is not None:  # told when to ask again: the client waits that long
            late = 0
            await clock.sleep(min(max(come_back, 1.0), 300.0))
            continue
        run.come_back_later += 1  # the client's deadline passed: it asks again
        late += 1
        if late >= PAST_DEADLINE:
            run.other_errors.append(
                f"{late} attempts in a row ran past the {DEADLINE:g} s deadline: given up"
            )
            return None
    run.other_errors.append(f"no answer within {GIVE_UP:g} s: given up")
    return None


async def measure(
    name: str, folder: Path, tier: str, scale: float, questions: int, emulator: RunningEmulator
) -> Run:
    run = Run(name, tier)
    control = httpx2.Client(base_url=emulator.base_url)
    control.post("/_emulator/reset")
    if TIERS[tier] is not None:
        control.post("/_emulator/limits", json={"tier": str(TIERS[tier])})
    control.post("/_emulator/latency", json={"mode": "realistic", "time_scale": scale})
    tally: Counter[tuple[str, int]] = Counter()
    clock = ScaledClock(scale)
    with tempfile.TemporaryDirectory() as state:
        settings = Settings(
            corpus=folder, state_dir=Path(state), model=MODEL, watch=False,
            tier=told(tier), ask_deadline=DEADLINE,
        )  # fmt: skip
        ledger = Ledger(settings.ledger_path)
        client = counting_client(emulator.base_url, tally)
        engine = Engine(
            settings, load_catalog(), Backend(client, "anthropic"), ledger,
            clock=clock.now, sleep=clock.sleep,
        )  # fmt: skip
        shares: list[float] = []
        try:
            async with (
                engine.reading_answers(),  # as `serve` runs it (engine/runtime.py)
                engine.builder.running(),
                anyio.create_task_group() as group,
            ):
                group.start_soon(first_index, engine)
                for n, question in enumerate(questions_for(name, folder, questions)):
                    got = await ask_patiently(engine, question, clock, run)
                    if got is None:
                        break
                    answer, _ = got
                    if answer.citations and run.first_answer_s is None:
                        run.first_answer_s = round(clock.elapsed(), 1)
                    run.answered += 1
                    usage = answer.usage
                    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
                    if n > 0 and prompt:
                        shares.append(usage.cache_read_tokens / prompt)
                run.usd_ten = round(engine.totals().cost_usd, 4)
                if engine.indexed:
                    run.documents = len(engine.current.snapshot.documents)
                    run.corpus_tokens = engine.current.corpus_tokens
                group.cancel_scope.cancel()
        finally:
            engine.close()
            await client.close()
            ledger.close()
    run.count_tokens = sum(n for (p, _), n in tally.items() if p.endswith("/count_tokens"))
    run.messages = sum(n for (p, _), n in tally.items() if p == "/v1/messages")
    run.status_429 = sum(n for (_, s), n in tally.items() if s == 429)
    run.cached_share_min = round(min(shares), 4) if shares else None
    run.baseline = await single_block(name, folder, tier, scale, emulator, control)
    control.close()
    return run


async def single_block(
    name: str, folder: Path, tier: str, scale: float, emulator: RunningEmulator,
    control: httpx2.Client,
) -> dict[str, Any]:  # fmt: skip
    """One request with the whole corpus and no cache_control, on a fresh emulator state."""
    control.post("/_emulator/reset")
    if TIERS[tier] is not None:
        control.post("/_emulator/limits", json={"tier": str(TIERS[tier])})
    control.post("/_emulator/latency", json={"mode": "realistic", "time_scale": scale})
    text = await anyio.to_thread.run_sync(whole_corpus, folder)
    question = questions_for(name, folder, 1)[0]
    client = AsyncAnthropic(base_url=emulator.base_url, api_key="bench-base", max_retries=2)
    started = time.monotonic()
    try:
        message = await client.messages.create(
            model=MODEL, max_tokens=1024,
            messages=[{"role": "user", "content": [
                {"type": "text", "text": text}, {"type": "text", "text": question},
            ]}],
        )  # fmt: skip
    except Exception as failed:  # the outcome is the figure: say what the API said
        status = getattr(failed, "status_code", None)
        return {"ok": False, "status": status, "error": str(failed)[:140]}
    finally:
        await client.close()
    catalog = load_catalog()
    cost = cost_usd(Usage.from_api(message.usage), catalog.get(MODEL))
    return {
        "ok": True,
        "seconds": round((time.monotonic() - started) * scale, 1),
        "usd_per_question": round(cost, 4),
        "usd_ten": round(10 * cost, 4),
    }


def whole_corpus(folder: Path) -> str:
    return "\n\n".join(
        f"<document path={p.relative_to(folder)}>\n{p.read_text(errors='replace')}\n</document>"
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    )


async def initialize_seconds(folder: Path, tier: str) -> float | None:
    """`corpus-cache serve` over stdio, a real MCP client: seconds to `initialize`."""
    with tempfile.TemporaryDirectory() as state, start_in_thread() as emulator:
        if TIERS[tier] is not None:
            httpx2.post(f"{emulator.base_url}/_emulator/limits", json={"tier": str(TIERS[tier])})
        env = _server_env(None, Path(state) / "pycache")
        _compile(env)  # its bytecode written, as after an install
        figures = await _serve_once(folder, emulator, Path(state), env)
    return float(figures["initialize_s"])


def render(runs: list[Run], scale: float) -> str:
    lines = [
        f"Works at every tier ({MODEL}; realistic latency, time scale {scale:g}; seconds are "
        "the API's)",
        f"{'corpus':9}{'tier':>10}{'docs':>7}{'tokens':>10}{'init s':>8}{'1st ans s':>10}"
        f"{'answered':>9}{'counts':>7}{'429s':>6}{'later':>6}{'RL err':>7}{'$ 10 q':>9}"
        f"{'cached':>8}   single block",
    ]
    for r in runs:
        base = r.baseline
        if base.get("ok"):
            baseline = f"{base['seconds']:.0f} s, ${base['usd_ten']:.2f} for ten"
        else:
            baseline = f"fails ({base.get('status')})"
        lines.append(
            f"{r.corpus:9}{r.tier:>10}{r.documents:>7,}{r.corpus_tokens:>10,}"
            f"{_num(r.initialize_s, 2):>8}{_num(r.first_answer_s, 0):>10}{r.answered:>9}"
            f"{r.count_tokens:>7,}{r.status_429:>6}{r.come_back_later:>6}"
            f"{r.rate_limit_errors:>7}{_usd(r.usd_ten):>9}{_pct(r.cached_share_min):>8}   "
            f"{baseline}"
        )
    lines.append("targets: " + "; ".join(f"{k} {v}" for k, v in TARGETS.items()))
    for r in runs:
        for error in r.other_errors[:2]:
            lines.append(f"  {r.corpus} tier {r.tier}: {error}")
    return "\n".join(lines)


def _num(value: float | None, places: int) -> str:
    return "-" if value is None else f"{value:.{places}f}"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.3f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


async def main_async(args: argparse.Namespace) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory() as tmp, start_in_thread() as emulator:
        folders = corpora(Path(tmp), args.corpus)
        for name, folder in folders.items():
            for tier in args.tier:
                run = await measure(name, folder, tier, args.time_scale, args.questions, emulator)
                if not args.no_initialize:
                    run.initialize_s = await initialize_seconds(folder, tier)
                print(json.dumps(asdict(run)), file=sys.stderr)
                runs.append(run)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", action="append", choices=["handbook", "400k", "10k"],
        help="a corpus to measure (repeatable; default: all three)",
    )  # fmt: skip
    parser.add_argument(
        "--tier", action="append", choices=list(TIERS),
        help="a tier to measure at (repeatable; default: all; N-no-tier: the emulator at "
        "tier N, corpus-cache not told it)",
    )  # fmt: skip
    parser.add_argument("--time-scale", type=float, default=None, help="default 20 (quick: 60)")
    parser.add_argument("--questions", type=int, default=None, help="default 10 (quick: 3)")
    parser.add_argument("--quick", action="store_true", help="fewer questions, faster clock")
    parser.add_argument("--no-initialize", action="store_true", help="skip the serve subprocess")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    args.corpus = args.corpus or ["handbook", "400k", "10k"]
    args.tier = args.tier or list(TIERS)
    args.time_scale = args.time_scale or (60.0 if args.quick else 20.0)
    args.questions = args.questions or (3 if args.quick else 10)
    os.environ.pop("ANTHROPIC_API_KEY", None)
    runs = anyio.run(main_async, args)
    print(render(runs, args.time_scale))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"model": MODEL, "time_scale": args.time_scale, "targets": TARGETS,
                  "runs": [asdict(r) for r in runs]}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
