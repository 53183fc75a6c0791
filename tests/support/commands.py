"""Running `corpus-cache` as a user runs it, in a real subprocess; a free loopback port."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path


def run(
    args: list[str], state: Path, timeout: float = 60, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["CORPUS_CACHE_STATE_DIR"] = str(state)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "corpus_cache", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stderr_until(process: subprocess.Popen[str], marker: str, seconds: float = 60) -> list[str]:
    """The lines `process` writes to its stderr (a text pipe) up to the first that holds
    `marker`, or all of them if it ends or `seconds` pass first: bounded, so a server that
    never says it fails the test instead of hanging it."""
    assert process.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], deadline - time.monotonic())
        line = process.stderr.readline() if ready else ""
        if not line:
            break
        seen.append(line)
        if marker in line:
            break
    return seen
