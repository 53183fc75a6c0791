"""What opening many MCP sessions over HTTP costs the server, and whether new clients still
get in: the server's resident memory before and after, and the status a fresh client gets.

Starts `corpus-cache serve --transport http` (with a token) on a small corpus, opens
`--sessions` sessions with bare `initialize` requests that are never closed (what a
client that leaks sessions does), reading VmRSS from /proc as it goes.

    .venv/bin/python bench/http_sessions.py [--sessions 10000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2

TOKEN = "a-bench-token-of-thirty-two-chars"
INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "bench", "version": "1"}},
}  # fmt: skip
HEADERS = {"accept": "application/json, text/event-stream", "authorization": f"Bearer {TOKEN}"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def open_sessions(url: str, count: int, concurrency: int, pid: int) -> dict[str, object]:
    statuses: dict[int, int] = {}
    samples: list[tuple[int, float]] = []
    done = 0
    limits = httpx2.Limits(max_connections=concurrency)
    async with httpx2.AsyncClient(headers=HEADERS, timeout=60, limits=limits) as http:

        async def worker(share: int) -> None:
            nonlocal done
            for _ in range(share):
                response = await http.post(url, json=INITIALIZE)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                done += 1
                if done % 1000 == 0:
                    samples.append((done, round(rss_mb(pid), 1)))

        async with anyio.create_task_group() as group:
            for index in range(concurrency):
                share = count // concurrency + (1 if index < count % concurrency else 0)
                group.start_soon(worker, share)
        fresh = await http.post(url, json=INITIALIZE)
    return {
        "statuses": statuses,
        "rss_by_sessions_mb": samples,
        "a_new_client_gets": fresh.status_code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        (corpus / "notes.md").write_text("# Notes\n\nThe Kestrel service listens on port 8443.\n")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        env["CORPUS_CACHE_STATE_DIR"] = str(Path(tmp) / "state")
        command = [sys.executable, "-m", "corpus_cache", "serve", "--corpus", str(corpus)]
        command += ["--transport", "http", "--port", str(port), "--auth-token", TOKEN]
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/mcp"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx2.get(url, timeout=1)
                    break
                except httpx2.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            before = rss_mb(process.pid)
            started = time.monotonic()
            result = anyio.run(open_sessions, url, args.sessions, args.concurrency, process.pid)
            report = {
                "sessions_opened": args.sessions,
                "rss_before_mb": round(before, 1),
                "rss_after_mb": round(rss_mb(process.pid), 1),
                "seconds": round(time.monotonic() - started, 1),
                **result,
            }
            print(json.dumps(report, indent=2))
        finally:
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
