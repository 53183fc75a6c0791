"""From `corpus-cache serve` to an answered `initialize`, and to a served corpus.

    .venv/bin/python bench/startup.py --json bench/results/startup.json

For the sample handbook and a generated folder of 10,000 small files (and an empty folder,
the baseline: what starting the process and the emulator costs), this starts
`corpus-cache serve` as a subprocess with a fresh state folder, connects a real MCP client
over stdio and measures the time to `initialize` answered, then polls `cache_status` until
indexing has ended, and counts the `count_tokens` calls the server made to get there. The
server talks to an emulator in this process (through ANTHROPIC_BASE_URL), whose log counts
the requests it answered by path. `--tier 1` gives the emulator a new account's rate limits
(token counting: 100 requests a minute); `--server-pythonpath DIR` runs the server from
another checkout's `server/` folder, to measure a baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).parent))
from corpus_cache.emulator import RunningEmulator, start_in_thread
from synthetic import write_folder

MODEL = "claude-sonnet-5-5"


async def _serve_once(
    corpus: Path, emulator: RunningEmulator, state: Path, server_path: str | None
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CORPUS_"))}
    env |= {
        "CORPUS_CACHE_STATE_DIR": str(state),
        "ANTHROPIC_API_KEY": "bench-startup",
        "ANTHROPIC_BASE_URL": emulator.base_url,
    }
    if server_path:
        env["PYTHONPATH"] = server_path
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corpus_cache", "serve", "--corpus", str(corpus), "--no-watch"],
        env=env,
    )
    started = time.perf_counter()
    async with Client(params) as client:
        initialized = time.perf_counter() - started
        while True:
            status = (await client.call_tool("cache_status", {})).structured_content or {}
            if status.get("indexing") is None:
                break
            await anyio.sleep(0.05)
        indexed = time.perf_counter() - started
    log = httpx2.get(f"{emulator.base_url}/_emulator/log", params={"limit": "0"}).json()
    return {
        "initialize_s": round(initialized, 3),
        "indexed_s": round(indexed, 3),
        "documents": status.get("documents"),
        "corpus_tokens": status.get("corpus_tokens"),
        "tokens_estimated": bool(status.get("tokens_estimated")),
        "count_tokens_calls": log["counts"].get("/v1/messages/count_tokens", 0),
    }


async def run(tier: int | None, server_path: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, start_in_thread() as emulator:
        control = httpx2.Client(base_url=emulator.base_url)
        folders = {
            "empty": Path(tmp) / "empty",
            "handbook": Path(__file__).parents[1] / "corpora" / "handbook",
            "generated-10k": write_folder(Path(tmp) / "generated", 10_000),
        }
        folders["empty"].mkdir()
        for name, folder in folders.items():
            control.post("/_emulator/reset")
            if tier is not None:
                control.post("/_emulator/limits", json={"tier": tier})
            state = Path(tmp) / f"state-{name}"
            results[name] = await _serve_once(folder, emulator, state, server_path)
            print(f"{name}: {results[name]}", file=sys.stderr)
        control.close()
    base = results["empty"]["initialize_s"] or 1e-9
    for figures in results.values():
        figures["initialize_vs_empty"] = round(figures["initialize_s"] / base, 2)
    return {"tier": tier, "model": MODEL, "results": results}


def render(report: dict[str, Any]) -> str:
    lines = [
        f"serve start -> initialize answered, and -> indexed (tier {report['tier'] or 'none'})",
        f"{'corpus':15}{'docs':>7}{'initialize s':>14}{'x empty':>9}{'indexed s':>11}"
        f"{'count_tokens':>14}",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"{name:15}{r['documents'] or 0:>7,}{r['initialize_s']:>14.2f}"
            f"{r['initialize_vs_empty']:>9.2f}{r['indexed_s']:>11.2f}{r['count_tokens_calls']:>14,}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", type=int, default=None, help="the emulator's rate limits")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--server-pythonpath", help="run the server from this server/ folder")
    args = parser.parse_args()
    report = anyio.run(run, args.tier, args.server_pythonpath)
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
