"""The ledger against the bill: a mixed fault scenario, replayed through a real MCP client,
the engine and the SDK against the emulator, then what the emulator says it billed
(`billed` in /_emulator/log) against what the ledger recorded, in dollars.

The scenario: a cold question whose response begins after the request timeout; a warm one;
a 529 retried; a cold write given up at the ask's deadline and asked again at once; a
fan-out whose one shard is refused (400) while its siblings run; streams cut by each ending
(end, drop, error event); a pre-warm slower than the request timeout; and keep-warm reads.
Every figure comes from the same run; the ratio must be 1.000 (exit status 1 otherwise).

    .venv/bin/python bench/ledger_audit.py [--json bench/results/ledger-audit.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client

from corpus_cache.accounting.ledger import Ledger, LedgerRow
from corpus_cache.api.backend import Backend, api_client
from corpus_cache.config import Settings
from corpus_cache.emulator import start_in_thread
from corpus_cache.engine.core import Engine
from corpus_cache.mcp_surface.server import build_server
from corpus_cache.models.catalog import load_catalog

HANDBOOK = Path(__file__).resolve().parent.parent / "corpora" / "handbook"
API_KEY = "ledger-audit"
QUESTIONS = [
    "How are deploys frozen?",
    "Who is on call and how is the pager handed over?",
    "How are incidents reviewed?",
    "What is the security policy for secrets?",
]


class Emulator:
    """The emulator's controls."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=30)

    def fault(self, **fault: Any) -> None:
        self.http.post("/_emulator/faults", json=fault).raise_for_status()

    def billed(self) -> list[dict[str, Any]]:
        entries = self.http.get("/_emulator/log", params={"limit": "1000"}).json()["requests"]
        return [e for e in entries if e["path"] == "/v1/messages"]


async def ask(client: Client, question: str, **arguments: Any) -> str:
    result = await client.call_tool("ask", {"question": question, **arguments})
    content = "".join(getattr(block, "text", "") for block in result.content)
    return ("error: " if result.is_error else "ok: ") + content[:90].replace("\n", " ")


async def scenario(
    client: Client, engine: Engine, emulator: Emulator, corpus: Path
) -> list[tuple[str, str]]:
    steps: list[tuple[str, str]] = []

    async def step(name: str, action: Callable[[], Awaitable[str]]) -> None:
        steps.append((name, await action()))

    def edit(name: str) -> None:
        path = next(p for p in sorted(corpus.rglob("*.md")) if p.name != "README.md")
        path.write_text(path.read_text() + f"\n\nAudit note {name}.\n")

    async def settled() -> None:
        """Until the responses read in the background (given up) have ended."""
        with anyio.fail_after(30):
            while engine.read_for_no_one:  # noqa: ASYNC110
                await anyio.sleep(0.05)

    async def refresh(warm: bool) -> str:
        result = await client.call_tool("refresh", {"warm": warm})
        return ("error: " if result.is_error else "ok: ") + ("warmed" if warm else "refreshed")

    emulator.fault(kind="delay", delay=2.0)  # past the 1 s request timeout
    await step("cold ask, slower than the request timeout", lambda: ask(client, QUESTIONS[0]))
    await step("warm ask", lambda: ask(client, QUESTIONS[0]))
    emulator.fault(status=529, error_type="overloaded_error", retry_after=0.05)
    await step("529, then answered", lambda: ask(client, QUESTIONS[1]))

    edit("one")
    await refresh(False)
    emulator.fault(kind="delay", delay=2.0)
    engine.settings.ask_deadline = 0.5
    await step("cold write given up at the deadline", lambda: ask(client, QUESTIONS[2]))
    engine.settings.ask_deadline = 20
    await step("asked again at once", lambda: ask(client, QUESTIONS[2]))
    await settled()

    emulator.fault(status=400, error_type="invalid_request_error", message="refused on purpose")
    emulator.fault(kind="delay", delay=1.0, count=2)  # the two siblings still run
    await step("fan-out, one shard refused", lambda: ask(client, QUESTIONS[3], fan_out=3))
    await settled()
    for ending in ("end", "drop", "error"):
        emulator.fault(kind="truncated", ending=ending)
        await step(f"stream cut ({ending})", lambda: ask(client, QUESTIONS[1]))

    edit("two")
    emulator.fault(kind="delay", delay=2.0)
    await refresh(False)
    await step("pre-warm slower than the request timeout", lambda: refresh(True))
    await step("warm ask after the pre-warm", lambda: ask(client, QUESTIONS[0]))
    await settled()
    emulator.http.delete("/_emulator/faults")
    return steps


def summary(rows: list[LedgerRow], billed: list[dict[str, Any]]) -> dict[str, Any]:
    emulator_usd = sum(e["billed"]["usd"] for e in billed if "billed" in e)
    ledger_usd = sum(r.cost_usd for r in rows)
    maybe = [r for r in rows if r.billing == "maybe"]
    writes = [e for e in billed if "billed" in e]
    return {
        "emulator_requests": len(billed),
        "emulator_billed_requests": len(writes),
        "emulator_cache_writes": sum(
            e["billed"]["usage"]["cache_creation_input_tokens"] > 0 for e in writes
        ),
        "ledger_rows": len(rows),
        "ledger_billed_rows": sum(r.billing == "billed" for r in rows),
        "ledger_unbilled_rows": sum(r.billing == "unbilled" for r in rows),
        "ledger_maybe_rows": len(maybe),
        "emulator_billed_usd": round(emulator_usd, 9),
        "ledger_billed_usd": round(ledger_usd, 9),
        "ledger_maybe_usd": round(sum(r.estimate_usd or 0.0 for r in maybe), 9),
        "ratio": ledger_usd / emulator_usd if emulator_usd else float("nan"),
    }


async def run(scratch: Path) -> dict[str, Any]:
    corpus = scratch / "corpus"
    shutil.copytree(HANDBOOK, corpus)
    with start_in_thread() as running:
        emulator = Emulator(running.base_url)
        settings = Settings(
            corpus=corpus, state_dir=scratch / "state", request_timeout=1.0, ask_deadline=20,
            budget_tokens=20_000, watch=False,
        )  # fmt: skip
        ledger = Ledger(settings.ledger_path)
        sdk = api_client(base_url=running.base_url, api_key=API_KEY, max_retries=0, timeout=1.0)
        backend = Backend(sdk, "anthropic", request_timeout=settings.request_timeout)
        engine = Engine(settings, load_catalog(), backend, ledger)
        started = time.perf_counter()
        try:
            async with engine.reading_answers():
                await engine.refresh()
                async with Client(build_server(engine)) as client:
                    steps = await scenario(client, engine, emulator, corpus)
            rows = list(reversed(ledger.requests(engine.corpus_key, limit=10_000)))
        finally:
            await sdk.close()
            ledger.close()
        result = summary(rows, emulator.billed())
        result["shards"] = len(engine.current.shards)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["steps"] = steps
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = anyio.run(run, Path(tmp))
    for name, outcome in result["steps"]:
        print(f"  {name:45} {outcome}")
    print(
        f"\n{result['emulator_requests']} Messages requests reached the emulator, "
        f"{result['emulator_billed_requests']} billed ({result['emulator_cache_writes']} "
        f"cache writes); the ledger has {result['ledger_rows']} rows: "
        f"{result['ledger_billed_rows']} billed, {result['ledger_unbilled_rows']} not billed, "
        f"{result['ledger_maybe_rows']} may have been billed"
    )
    print(f"emulator billed   ${result['emulator_billed_usd']:.6f}")
    print(f"ledger, billed    ${result['ledger_billed_usd']:.6f}")
    print(f"ledger, maybe     ${result['ledger_maybe_usd']:.6f} (an estimate, kept apart)")
    print(f"ratio             {result['ratio']:.3f}  ({result['seconds']} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if abs(result["ratio"] - 1.0) < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
