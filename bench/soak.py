"""Soak: an hour of simulated traffic in a few minutes, with edits and API faults mixed in;
memory and open file descriptors must stay flat.

The server's parts run as `corpus-cache serve` runs them (engine, folder watcher, keep-warm
loop, MCP server) in this process, with a real MCP client connected in memory, and the
emulator runs as a process of its own. Both keep simulated time: the emulator's clock is
frozen and moved by /_emulator/clock, the engine reads the same instant, and the keep-warm
loop looks at it every few milliseconds of wall time, so an hour passes in minutes while
cache entries are written, read, kept warm and expire by the simulated clock.

Traffic comes in bursts (a working session, then a break), as questions (some in
conversations), searches, reads, listings, status checks and refreshes through the MCP
tools; edits to the folder (rewrites, new files, deletions, renames) go through the
watcher; injected API faults (529, 500, 429, slow responses, streams cut off, count_tokens
failures) hit whatever request comes next.

Every simulated minute, after a garbage collection: resident memory (VmRSS) and open file
descriptors of this process and of the emulator's, live Python objects, threads, tasks,
ledger rows and emulator cache entries. The first minutes are a warm-up (imports, the first
index, caches filling). After it each figure is compared with itself, the baseline
measured in the same run: end over start, and the mean of the second half over the mean of
the first. Growth past the limits below fails the run (exit status 1).

    .venv/bin/python bench/soak.py [--minutes 60] [--warmup 10] [--seed 7]
        [--json bench/results/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anthropic import AsyncAnthropic
from mcp import Client

sys.path.insert(0, str(Path(__file__).parent))
from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.backend import API_RETRIES, OFFLINE_EMULATOR, Backend
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.config import Settings
from corpus_cache.engine.core import Engine
from corpus_cache.engine.runtime import keeping_warm, watching
from corpus_cache.engine.warm import prewarm_after_changes
from corpus_cache.mcp_surface.server import build_server
from corpus_cache.models.catalog import load_catalog
from freshness import emulator_process
from synthetic import document

SIM_START = 1_800_000_000.0
STEP = 2.0  # simulated seconds per step of the traffic
KEEP_WARM_CHECK = 0.01  # wall seconds between the keep-warm loop's looks at the clock
API_KEY = "soak"

# Growth after the warm-up that fails the run.
MAX_RSS_HALVES = 1.10  # second-half mean over first-half mean
MAX_RSS_GROWTH_MB = 25.0  # end over start, after the warm-up
MAX_FD_GROWTH = 3  # descriptors, end over start and second-half max over first-half max
MAX_OBJECTS_HALVES = 1.05

QUESTIONS = [
    "Which depot reroutes the urgent shipment?",
    "When are nightly invoices audited?",
    "What happens to a late pallet before 09:00?",
    "Who validates the regional manifest?",
    "How often is the primary replica restored?",
    "When does the dashboard archive stale alerts?",
    "Which carrier books the overdue contract?",
    "What does the automatic queue forward?",
]
SEARCHES = [
    "urgent shipment",
    "nightly invoice",
    "regional depot",
    "stale alert",
    "pallet",
    "07:15",
]

# Per simulated minute, in each phase of the hour.
RATES: dict[str, dict[str, float]] = {
    "busy": {
        "ask": 20, "search": 27, "read": 18, "list": 4, "status": 4, "refresh": 0.3,
        "resource": 0.6, "edit": 3, "fault": 1.5,
    },
    "sparse": {"ask": 1 / 6, "search": 0.3, "read": 0.2, "status": 0.1, "fault": 0.05},
    "idle": {"status": 0.05, "resource": 0.05},
}  # fmt: skip

FAULTS: dict[str, dict[str, Any]] = {
    "529 overloaded, retried": {"status": 529, "error_type": "overloaded_error"},
    "500 three times, the call fails": {"status": 500, "error_type": "api_error", "count": 3},
    "429 rate limited, retried": {"status": 429, "error_type": "rate_limit_error"},
    "slow response (0.3 s)": {"kind": "delay", "delay": 0.3},
    "stream cut off": {"kind": "truncated", "ending": "drop"},
    "stream error event": {"kind": "truncated", "ending": "error"},
    "count_tokens 529": {"status": 529, "path": "/v1/messages/count_tokens"},
}


# --- simulated time and the two processes ---------------------------------------------


class SimulatedClock:
    """The engine's clock: the instant the emulator's frozen clock was last set to."""

    def __init__(self, control: httpx2.Client) -> None:
        self.control = control
        self.now = SIM_START
        self._post({"frozen": True, "set": SIM_START})

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._post({"set": self.now})

    def _post(self, body: dict[str, Any]) -> None:
        self.control.post("/_emulator/clock", json=body).raise_for_status()


def proc(pid: int | str = "self") -> tuple[float, int]:
    """Resident memory in MB and open file descriptors of a process."""
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


# --- the traffic ------------------------------------------------------------------------


@dataclass
class Tally:
    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    edits: Counter[str] = field(default_factory=Counter)
    edits_not_live: int = 0


class Traffic:
    """What a simulated hour of use does, step by step, from a seeded random source."""

    def __init__(
        self,
        client: Client,
        engine: Engine,
        corpus: Path,
        control: httpx2.Client,
        seed: int,
    ) -> None:
        self.client = client
        self.engine = engine
        self.corpus = corpus
        self.control = control
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.session: str | None = None
        self.extra: list[Path] = []  # files the edits created
        self.revision = 0
        self._swapped = anyio.Event()
        engine.on_swap(self._on_swap)

    async def _on_swap(self, old: Corpus | None, new: Corpus) -> None:
        self._swapped.set()

    @staticmethod
    def phase(minute: float) -> str:
        """Each hour: working sessions, breaks, and a stretch of a question every few
        minutes (where keeping the cache warm pays)."""
        m = minute % 60
        for end, phase in ((12, "busy"), (20, "idle"), (30, "busy"), (44, "sparse"), (52, "busy")):
            if m < end:
                return phase
        return "idle"

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
        self.tally.calls[tool] += 1
        result = await self.client.call_tool(tool, arguments)
        if result.is_error:
            self.tally.errors[tool] += 1
            return None
        return result.structured_content

    async def step(self, minute: float) -> None:
        rates = RATES[self.phase(minute)]
        rng = self.rng

        def due(what: str) -> bool:
            return rng.random() < rates.get(what, 0.0) * STEP / 60

        if due("fault"):
            self.fault()
        if due("edit"):
            await self.edit()
        if due("ask"):
            await self.ask()
        if due("search"):
            await self.call("search", {"query": rng.choice(SEARCHES), "limit": 10})
        if due("read"):
            doc = rng.choice(self.engine.current.snapshot.documents)
            line = rng.randint(1, max(1, doc.line_count))
            await self.call("read_document", {"path": doc.path, "start_line": line})
        if due("list"):
            await self.call("list_documents", {"limit": 50})
        if due("status"):
            await self.call("cache_status", {})
        if due("refresh"):
            await self.call("refresh", {"warm": rng.random() < 0.5})
        if due("resource"):
            await self.client.read_resource("corpus://stats")
            self.tally.calls["resource"] += 1

    async def ask(self) -> None:
        arguments: dict[str, Any] = {"question": self.rng.choice(QUESTIONS)}
        roll = self.rng.random()
        if roll < 0.1 or (roll < 0.3 and self.session is not None):
            arguments["session"] = "new" if roll < 0.1 or self.session is None else self.session
        out = await self.call("ask", arguments)
        if out is not None and out.get("session"):
            self.session = out["session"]

    def fault(self) -> None:
        name = self.rng.choice(sorted(FAULTS))
        body = {"retry_after": 0.05, **FAULTS[name]}
        self.control.post("/_emulator/faults", json=body).raise_for_status()
        self.tally.faults[name] += 1

    async def edit(self) -> None:
        """A save that keeps the folder's size about level: a rewritten paragraph, a new
        file, a deleted or renamed one."""
        rng = self.rng
        self.revision += 1
        kind = rng.choice(["rewrite", "rewrite", "rewrite", "create", "delete", "rename"])
        if kind == "create" and len(self.extra) >= 6:
            kind = "delete"
        if kind in ("delete", "rename") and not self.extra:
            kind = "create"
        self._swapped = anyio.Event()
        if kind == "rewrite":
            path = self.corpus / rng.choice(self.engine.current.snapshot.documents).path
            paragraphs = path.read_text().split("\n\n")
            at = rng.randrange(len(paragraphs))
            paragraphs[at] = f"Revision {self.revision}: " + document(self.revision, 6)
            path.write_text("\n\n".join(paragraphs))
        elif kind == "create":
            path = self.corpus / "notes" / f"note-{self.revision}.md"
            path.parent.mkdir(exist_ok=True)
            path.write_text(f"# Note {self.revision}\n\n{document(10_000 + self.revision, 30)}\n")
            self.extra.append(path)
        elif kind == "delete":
            self.extra.pop(rng.randrange(len(self.extra))).unlink()
        else:
            old = self.extra.pop(rng.randrange(len(self.extra)))
            new = old.with_name(f"renamed-{self.revision}.md")
            old.rename(new)
            self.extra.append(new)
        self.tally.edits[kind] += 1
        with anyio.move_on_after(3) as waited:  # the watcher's refresh; it may meet a fault
            await self._swapped.wait()
        self.tally.edits_not_live += waited.cancel_called


# --- samples --------------------------------------------------------------------------


def sample(minute: int, engine: Engine, control: httpx2.Client, emulator: int) -> dict[str, Any]:
    gc.collect()
    rss, fds = proc()
    emulator_rss, emulator_fds = proc(emulator)
    cache = control.get("/_emulator/cache", headers={"x-api-key": API_KEY}).json()["entries"]
    return {
        "minute": minute,
        "rss_mb": round(rss, 2),
        "fds": fds,
        "objects": len(gc.get_objects()),
        "threads": threading.active_count(),
        "tasks": len(asyncio.all_tasks()),
        "ledger_rows": engine.ledger.totals(engine.corpus_key).requests,
        "emulator_rss_mb": round(emulator_rss, 2),
        "emulator_fds": emulator_fds,
        "emulator_cache_entries": len(cache),
        # Every collection the engine holds, and the ones in it: growing with time, a leak.
        "engine_collections": {
            name: size(value)
            for name, value in vars(engine).items()
            if isinstance(value, dict | list | set)
        },
    }


def size(collection: dict[Any, Any] | list[Any] | set[Any]) -> int:
    """Items in a collection, and in the lists, dicts and sets it holds."""
    inner = collection.values() if isinstance(collection, dict) else collection
    return len(collection) + sum(len(v) for v in inner if isinstance(v, dict | list | set))


def trend(samples: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [float(s[key]) for s in samples]
    half = len(values) // 2
    first, second = values[:half], values[half:]
    return {
        "start": values[0],
        "end": values[-1],
        "max": max(values),
        "end_over_start": round(values[-1] / values[0], 3) if values[0] else 0.0,
        "first_half_mean": round(statistics.mean(first), 2),
        "second_half_mean": round(statistics.mean(second), 2),
        "second_over_first_half": round(statistics.mean(second) / statistics.mean(first), 3),
        "first_half_max": max(first),
        "second_half_max": max(second),
    }


# --- the run --------------------------------------------------------------------------


def write_corpus(root: Path, files: int) -> None:
    for n in range(files):
        path = root / f"team-{n % 4}" / f"doc-{n:03d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Document {n}\n\n{document(n, 60)}\n")


async def soak(
    args: argparse.Namespace, base_url: str, emulator: int, scratch: Path
) -> dict[str, Any]:
    corpus, state = scratch / "corpus", scratch / "state"
    write_corpus(corpus, args.files)
    control = httpx2.Client(base_url=base_url, timeout=30)
    clock = SimulatedClock(control)
    settings = Settings(corpus=corpus, state_dir=state, debounce_ms=50)
    sdk = AsyncAnthropic(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=30)
    ledger = Ledger(settings.ledger_path)
    backend = Backend(sdk, OFFLINE_EMULATOR, retries=API_RETRIES, request_timeout=30)
    engine = Engine(settings, load_catalog(), backend, ledger, clock=clock)
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        await engine.refresh()
        prewarm_after_changes(engine)
        async with (
            Client(build_server(engine)) as client,
            watching(engine),
            keeping_warm(engine, check_every=KEEP_WARM_CHECK),
        ):
            traffic = Traffic(client, engine, corpus, control, args.seed)
            steps_per_minute = round(60 / STEP)
            for step in range(args.minutes * steps_per_minute + 1):
                minute = step * STEP / 60
                if step % steps_per_minute == 0:
                    samples.append(sample(int(minute), engine, control, emulator))
                    if args.verbose:
                        print(json.dumps(samples[-1]), flush=True)
                if step == args.minutes * steps_per_minute:
                    break
                await traffic.step(minute)
                clock.advance(STEP)
                await anyio.sleep(3 * KEEP_WARM_CHECK)  # the keep-warm loop looks at the clock
    finally:
        await sdk.close()
        ledger.close()
        control.close()
    wall = time.perf_counter() - started
    kinds = Counter(row.kind for row in ledger_rows(settings))
    return {
        "simulated_minutes": args.minutes,
        "wall_seconds": round(wall, 1),
        "warmup_minutes": args.warmup,
        "calls": dict(traffic.tally.calls),
        "call_errors": dict(traffic.tally.errors),
        "faults_injected": dict(traffic.tally.faults),
        "edits": dict(traffic.tally.edits),
        "edits_not_live_within_3s": traffic.tally.edits_not_live,
        "ledger_rows_by_kind": dict(kinds),
        "samples": samples,
    }


def ledger_rows(settings: Settings) -> list[dict[str, Any]]:
    ledger = Ledger(settings.ledger_path)
    try:
        return ledger.requests(str(settings.corpus), limit=1_000_000)
    finally:
        ledger.close()


def verdict(out: dict[str, Any]) -> dict[str, Any]:
    after = [s for s in out["samples"] if s["minute"] >= out["warmup_minutes"]]
    figures = {key: trend(after, key) for key in (
        "rss_mb", "fds", "objects", "threads", "tasks", "emulator_rss_mb", "emulator_fds",
        "emulator_cache_entries", "ledger_rows",
    )}  # fmt: skip
    rss, fds, objects = figures["rss_mb"], figures["fds"], figures["objects"]
    em_rss, em_fds = figures["emulator_rss_mb"], figures["emulator_fds"]
    checks = {
        "rss second/first half": [rss["second_over_first_half"], MAX_RSS_HALVES],
        "rss growth MB": [round(rss["end"] - rss["start"], 2), MAX_RSS_GROWTH_MB],
        "fd growth": [fds["end"] - fds["start"], MAX_FD_GROWTH],
        "fd halves' max growth": [fds["second_half_max"] - fds["first_half_max"], MAX_FD_GROWTH],
        "objects second/first half": [objects["second_over_first_half"], MAX_OBJECTS_HALVES],
        "emulator rss second/first half": [em_rss["second_over_first_half"], MAX_RSS_HALVES],
        "emulator rss growth MB": [round(em_rss["end"] - em_rss["start"], 2), MAX_RSS_GROWTH_MB],
        "emulator fd growth": [em_fds["end"] - em_fds["start"], MAX_FD_GROWTH],
    }
    first, last = after[0]["engine_collections"], after[-1]["engine_collections"]
    grew = {k: [first.get(k, 0), v] for k, v in last.items() if v > max(8, 2 * first.get(k, 0))}
    return {
        "figures": figures,
        "checks": {k: {"value": v, "limit": lim, "ok": v <= lim} for k, (v, lim) in checks.items()},
        "engine_collections_that_grew": grew,
    }


def counts(tally: dict[str, int]) -> str:
    return f"{sum(tally.values()):,} ({', '.join(f'{k} {v}' for k, v in sorted(tally.items()))})"


def report(out: dict[str, Any], result: dict[str, Any]) -> None:
    minutes, wall = out["simulated_minutes"], out["wall_seconds"]
    print(
        f"{minutes} simulated minutes in {wall:.0f} s of wall time ({minutes * 60 / wall:.0f}x "
        f"faster); the first {out['warmup_minutes']} minutes are the warm-up"
    )
    print(f"  tool calls:      {counts(out['calls'])}")
    print(f"  error results:   {counts(out['call_errors'])}")
    print(f"  faults injected: {counts(out['faults_injected'])}")
    print(f"  edits:           {counts(out['edits'])}")
    print(
        f"  edits not live within 3 s (the refresh met a fault): {out['edits_not_live_within_3s']}"
    )
    print(f"  ledger rows:     {counts(out['ledger_rows_by_kind'])}")
    print("  after the warm-up            start        end        max  end/start  2nd/1st half")
    for key, f in result["figures"].items():
        print(
            f"  {key:24} {f['start']:10,.1f} {f['end']:10,.1f} {f['max']:10,.1f}"
            f"  {f['end_over_start']:9.3f}  {f['second_over_first_half']:12.3f}"
        )
    if result["engine_collections_that_grew"]:
        print(f"  engine collections that grew: {result['engine_collections_that_grew']}")
    for name, check in result["checks"].items():
        outcome = "ok" if check["ok"] else "FAILED"
        print(f"  check {name}: {check['value']} <= {check['limit']}: {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=int, default=60, help="simulated minutes")
    parser.add_argument("--warmup", type=int, default=10, help="simulated minutes left out")
    parser.add_argument("--files", type=int, default=40, help="documents in the corpus")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--verbose", action="store_true", help="print each sample")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="soak-") as scratch,
        emulator_process() as (url, pid),
    ):
        out = anyio.run(soak, args, url, pid, Path(scratch))
    result = verdict(out)
    report(out, result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**out, **result}, indent=1) + "\n")
    if not all(check["ok"] for check in result["checks"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
