"""From `corpus-cache serve` to an answered `initialize`, and to a served corpus.

    .venv/bin/python bench/startup.py --json bench/results/startup.json

For the sample handbook and a generated folder of 10,000 small files (and an empty folder,
the baseline: what starting the process and the emulator costs), this starts
`corpus-cache serve` as a subprocess with a fresh state folder, connects a real MCP client
over stdio and measures the time to `initialize` answered, and the CPU time the server
process had used by then (user and system, from /proc: wall times are noisy on a shared
machine, CPU time much less so), then polls `cache_status` until indexing has ended, and
counts the `count_tokens` calls the server made to get there. `--runs N` starts each folder
N times and reports the median (and the fastest). The
server talks to an emulator in this process (through ANTHROPIC_BASE_URL), whose log counts
the requests it answered by path. `--tier 1` gives the emulator a new account's rate limits
(token counting: 100 requests a minute); `--server-pythonpath DIR` runs the server from
another checkout's `server/` folder, to measure a baseline. `--pycache DIR` lets the server
keep compiled bytecode in DIR (PYTHONPYCACHEPREFIX), compiled once before the runs, as an
installed package has it; without it the server inherits this environment's
PYTHONDONTWRITEBYTECODE, if set, and compiles every module it imports at every start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


def _server_env(server_path: str | None, pycache: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CORPUS_"))}
    if server_path:
        env["PYTHONPATH"] = server_path
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def _compile(env: dict[str, str]) -> None:
    """Import everything `serve` imports once, so that its bytecode is there."""
    modules = "corpus_cache.cli.main, corpus_cache.mcp_surface.server, corpus_cache.engine.runtime"
    subprocess.run([sys.executable, "-c", f"import {modules}"], env=env, check=True)


async def _serve_once(
    corpus: Path, emulator: RunningEmulator, state: Path, base_env: dict[str, str]
) -> dict[str, Any]:
    env = dict(base_env)
    env |= {
        "CORPUS_CACHE_STATE_DIR": str(state),
        "ANTHROPIC_API_KEY": "bench-startup",
        "ANTHROPIC_BASE_URL": emulator.base_url,
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corpus_cache", "serve", "--corpus", str(corpus), "--no-watch"],
        env=env,
    )
    started = time.perf_counter()
    async with Client(params) as client:
        initialized = time.perf_counter() - started
        cpu = _server_cpu_seconds()
        while True:
            status = (await client.call_tool("cache_status", {})).structured_content or {}
            if status.get("indexing") is None:
                break
            await anyio.sleep(0.05)
        indexed = time.perf_counter() - started
    log = httpx2.get(f"{emulator.base_url}/_emulator/log", params={"limit": "0"}).json()
    return {
        "initialize_s": round(initialized, 3),
        "initialize_cpu_s": cpu,
        "indexed_s": round(indexed, 3),
        "documents": status.get("documents"),
        "corpus_tokens": status.get("corpus_tokens"),
        "tokens_estimated": bool(status.get("tokens_estimated")),
        "count_tokens_calls": log["counts"].get("/v1/messages/count_tokens", 0),
    }


def _server_cpu_seconds() -> float | None:
    """User and system CPU seconds used so far by this process's child (the server), from
    /proc; None where there is no /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():  # fields[1] is the parent's pid
            return round((int(fields[11]) + int(fields[12])) / ticks, 2)
    return None


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each timing over the runs (and the fastest), the rest from the last."""
    out = dict(runs[-1])
    for key in ("initialize_s", "initialize_cpu_s", "indexed_s"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = round(statistics.median(values), 3) if values else None
        out[key.replace("_s", "_min_s")] = min(values) if values else None
    out["runs"] = len(runs)
    return out


async def run(
    tier: int | None, server_path: str | None, runs: int = 1, pycache: Path | None = None
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    env = _server_env(server_path, pycache)
    if pycache is not None:
        _compile(env)
    with tempfile.TemporaryDirectory() as tmp, start_in_thread() as emulator:
        control = httpx2.Client(base_url=emulator.base_url)
        folders = {
            "empty": Path(tmp) / "empty",
            "handbook": Path(__file__).parents[1] / "corpora" / "handbook",
            "generated-10k": write_folder(Path(tmp) / "generated", 10_000),
        }
        folders["empty"].mkdir()
        for name, folder in folders.items():
            each = []
            for number in range(runs):
                control.post("/_emulator/reset")
                if tier is not None:
                    control.post("/_emulator/limits", json={"tier": tier})
                state = Path(tmp) / f"state-{name}-{number}"
                each.append(await _serve_once(folder, emulator, state, env))
                print(f"{name}: {each[-1]}", file=sys.stderr)
            results[name] = _summary(each)
        control.close()
    base = results["empty"]["initialize_s"] or 1e-9
    for figures in results.values():
        figures["initialize_vs_empty"] = round(figures["initialize_s"] / base, 2)
    return {"tier": tier, "model": MODEL, "bytecode": pycache is not None, "results": results}


def render(report: dict[str, Any]) -> str:
    runs = next(iter(report["results"].values()))["runs"]
    lines = [
        f"serve start -> initialize answered, and -> indexed (tier {report['tier'] or 'none'}; "
        f"{'with' if report['bytecode'] else 'without'} cached bytecode; median of {runs} "
        "run(s), fastest in brackets)",
        f"{'corpus':15}{'docs':>7}{'initialize s':>16}{'x empty':>9}{'server CPU s':>16}"
        f"{'indexed s':>16}{'count_tokens':>14}",
    ]

    def figure(r: dict[str, Any], key: str) -> str:
        if r[key] is None:
            return "n/a"
        return f"{r[key]:.2f} ({r[key.replace('_s', '_min_s')]:.2f})"

    for name, r in report["results"].items():
        lines.append(
            f"{name:15}{r['documents'] or 0:>7,}{figure(r, 'initialize_s'):>16}"
            f"{r['initialize_vs_empty']:>9.2f}{figure(r, 'initialize_cpu_s'):>16}"
            f"{figure(r, 'indexed_s'):>16}{r['count_tokens_calls']:>14,}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", type=int, default=None, help="the emulator's rate limits")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--server-pythonpath", help="run the server from this server/ folder")
    parser.add_argument("--runs", type=int, default=1, help="starts per folder (default: 1)")
    parser.add_argument("--pycache", type=Path, help="keep the server's bytecode here")
    args = parser.parse_args()
    report = anyio.run(run, args.tier, args.server_pythonpath, args.runs, args.pycache)
    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
