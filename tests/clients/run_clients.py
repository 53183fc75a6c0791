"""`make test-clients`: corpus-cache driven by the real clients people use, installed from
npm into .clients/ (opt-in: it needs the npm registry and takes about a minute).

- The MCP Inspector CLI lists the tools and calls `search` and `cache_status`, over stdio
  and over streamable HTTP (with a bearer token), in both protocol eras.
- The Claude Code CLI, with HOME in a temporary folder and no API key, gets the stdio server
  through `corpus-cache install claude-code` and the HTTP one through `claude mcp add
  --transport http`, and `claude mcp list` must report both connected.

Current releases of both clients need Node.js 22 or newer; on an older Node, npm would
quietly install old releases, so a Node 22 from npm's `node` package is used instead.
Prints what each client reported and exits non-zero if any check fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / ".clients"
CORPUS = ROOT / "corpora" / "handbook"
PYTHON = str(Path(sys.executable).absolute())
SERVE = [PYTHON, "-m", "corpus_cache", "serve", "--corpus", str(CORPUS)]
TOOLS = ["ask", "search", "list_documents", "read_document", "cache_status"]
NODE_MAJOR = 22


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {name}" + (f": {detail}" if detail else ""), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)


def run(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def node_major(node: str) -> int:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return int(version.stdout.strip().lstrip("v").split(".")[0] or 0)


def node_bin_dir(env: dict[str, str]) -> Path:
    """A folder holding Node.js 22 or newer, installed from npm if the machine's is older."""
    system = shutil.which("node", path=env["PATH"])
    if system and node_major(system) >= NODE_MAJOR:
        return Path(system).parent
    local = CLIENTS / "node" / "node_modules" / ".bin"
    if not (local / "node").exists() or node_major(str(local / "node")) < NODE_MAJOR:
        print(f"Installing Node.js {NODE_MAJOR} from npm into {CLIENTS / 'node'} ...", flush=True)
        done = run(
            ["npm", "install", "--prefix", str(CLIENTS / "node"), "--no-audit", "--no-fund",
             f"node@{NODE_MAJOR}"],
            env, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            sys.exit(f"npm install node@{NODE_MAJOR} failed:\n{done.stderr}")
    return local


def install_clients(env: dict[str, str]) -> Path:
    print("Installing @modelcontextprotocol/inspector and @anthropic-ai/claude-code ...")
    done = run(
        ["npm", "install", "--prefix", str(CLIENTS / "npm"), "--no-audit", "--no-fund",
         "@modelcontextprotocol/inspector", "@anthropic-ai/claude-code"],
        env, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"npm install failed:\n{done.stderr}")
    bin_dir = CLIENTS / "npm" / "node_modules" / ".bin"
    for package in ("@modelcontextprotocol/inspector", "@anthropic-ai/claude-code"):
        manifest = CLIENTS / "npm" / "node_modules" / package / "package.json"
        print(f"  {package} {json.loads(manifest.read_text())['version']}")
    return bin_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_server(env: dict[str, str], token: str) -> Iterator[str]:
    port = free_port()
    command = [*SERVE, "--transport", "http", "--port", str(port), f"--auth-token={token}"]
    print(f"\nStarting: {shlex.join(command[:-1])} <token>", flush=True)
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield _wait_for(process, port, log)
        finally:
            process.terminate()
            process.wait(timeout=10)


def _wait_for(process: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"http://127.0.0.1:{port}/mcp"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                sys.exit(f"the HTTP server did not start:\n{log.read().decode()}")
            time.sleep(0.1)


def inspector_calls(
    checks: Checks, inspector: list[str], target: list[str], env: dict[str, str], label: str
) -> None:
    def call(*method: str) -> Any:
        done = run([*inspector, *method, "--format", "json", "-q", *target], env)
        if done.returncode != 0:
            return {"error": (done.stderr or done.stdout).strip()[:300]}
        out = json.loads(done.stdout)
        return out.get("result", out)

    listed = call("--method", "tools/list")
    names = [tool["name"] for tool in listed.get("tools", [])]
    checks.check(f"{label}: tools/list", names[: len(TOOLS)] == TOOLS, ", ".join(names))
    found = call(
        "--method", "tools/call", "--tool-name", "search",
        "--tool-arg", "query=deploy freeze", "--tool-arg", "limit=3",
    )  # fmt: skip
    hits = (found.get("structuredContent") or {}).get("hits", [])
    top = f"{hits[0]['path']}:{hits[0]['start_line']}-{hits[0]['end_line']}" if hits else found
    ok = bool(hits) and not found.get("isError")
    checks.check(f"{label}: tools/call search", ok, f"{len(hits)} hits, first {top}"[:300])
    status = call("--method", "tools/call", "--tool-name", "cache_status")
    text = (status.get("content") or [{}])[0].get("text", str(status))
    first_line = text.splitlines()[0] if text else ""
    checks.check(f"{label}: tools/call cache_status", "Corpus " in text, first_line[:300])


def inspector_checks(
    checks: Checks, bin_dir: Path, env: dict[str, str], url: str, token: str
) -> None:
    inspector = [str(bin_dir / "mcp-inspector"), "--cli"]
    http = ["--transport", "http", "--server-url", url]
    bearer = ["--header", f"Authorization: Bearer {token}"]
    for era in ("legacy", "modern"):
        print(f"\nMCP Inspector over stdio, protocol era {era}")
        inspector_calls(checks, [*inspector, "--protocol-era", era], ["--", *SERVE], env, "stdio")
    for era in ("legacy", "modern"):
        print(f"\nMCP Inspector over HTTP with the bearer token, protocol era {era}")
        inspector_calls(checks, [*inspector, "--protocol-era", era], [*http, *bearer], env, "http")
    print("\nMCP Inspector over HTTP without the token")
    refused = run([*inspector, "--method", "tools/list", "--format", "json", "-q", *http], env)
    said = (refused.stderr + refused.stdout).strip()
    checks.check(
        "refused (the client falls back to OAuth, which the server does not offer)",
        refused.returncode != 0 and ("401" in said or "auth_required" in said),
        said[:200],
    )


def claude_code_checks(
    checks: Checks, bin_dir: Path, env: dict[str, str], url: str, token: str, home: Path
) -> None:
    print("\nClaude Code CLI (HOME in a temporary folder, no API key)")
    claude = str(bin_dir / "claude")
    project = home / "project"
    project.mkdir()
    installed = run(
        [PYTHON, "-m", "corpus_cache", "install", "claude-code", "--corpus", str(CORPUS),
         "--name", "corpus-stdio"],
        env, cwd=project,
    )  # fmt: skip
    print(_indent(installed.stdout + installed.stderr))
    checks.check("corpus-cache install claude-code (through `claude mcp add`)",
                 installed.returncode == 0 and "claude mcp add" in installed.stdout)  # fmt: skip
    added = run(
        [claude, "mcp", "add", "--transport", "http", "corpus-http", url,
         "--header", f"Authorization: Bearer {token}"],
        env, cwd=project,
    )  # fmt: skip
    checks.check("claude mcp add --transport http", added.returncode == 0, added.stderr.strip())
    listed = run([claude, "mcp", "list"], env, cwd=project)
    print(_indent(listed.stdout + listed.stderr))
    lines = listed.stdout.splitlines()
    for name in ("corpus-stdio", "corpus-http"):
        line = next((text for text in lines if text.startswith(f"{name}:")), "")
        checks.check(f"claude mcp list: {name} connected", "Connected" in line and "✘" not in line)


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.strip().splitlines())


def main() -> int:
    if not CORPUS.is_dir():
        sys.exit(f"sample corpus not found: {CORPUS}")
    CLIENTS.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CORPUS_"))}
    node = node_bin_dir(base)
    npm_env = {**base, "PATH": f"{node}{os.pathsep}{base['PATH']}"}
    bin_dir = install_clients(npm_env)
    checks = Checks()
    token = secrets.token_hex(24)  # no leading "-" to confuse a command line
    with tempfile.TemporaryDirectory(prefix="corpus-cache-clients-") as temporary:
        home = Path(temporary)
        env = {
            **npm_env,
            "PATH": f"{bin_dir}{os.pathsep}{npm_env['PATH']}",
            "HOME": str(home),
            "CORPUS_CACHE_STATE_DIR": str(home / "state"),
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        with http_server(env, token) as url:
            inspector_checks(checks, bin_dir, env, url, token)
            claude_code_checks(checks, bin_dir, env, url, token, home)
    print(f"\n{checks.passed} passed, {len(checks.failed)} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
