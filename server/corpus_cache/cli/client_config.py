"""What `corpus-cache install` writes, computed from data alone: the server's command line,
each client's entry, where Claude Desktop keeps its file, and the merged file text. Nothing
here touches the disk, so all of it can be shown before it is written."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus_cache.errors import SetupError

SERVERS_KEY = "mcpServers"
DESKTOP_FILE = "claude_desktop_config.json"
PROJECT_FILE = ".mcp.json"
API_KEY_VAR = "ANTHROPIC_API_KEY"


@dataclass(frozen=True)
class ServerCommand:
    """How a client starts the server: absolute paths only, since clients start servers from
    a folder of their own choosing and with a reduced PATH."""

    command: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [self.command, *self.args]


def server_command(
    python: Path, corpus: Path, model: str | None = None, env: Mapping[str, str] | None = None
) -> ServerCommand:
    if not python.is_absolute() or not corpus.is_absolute():
        raise ValueError("the server command needs absolute paths")
    args = ["-m", "corpus_cache", "serve", "--corpus", str(corpus)]
    if model:
        args += ["--model", model]
    return ServerCommand(str(python), tuple(args), dict(env or {}))


def is_ephemeral(prefix: Path) -> bool:
    """Whether a Python environment is one `uvx` made on the fly in uv's cache, which
    `uv cache clean` or `uv cache prune` may delete at any time."""
    return prefix.parent.name.startswith("archive-v")


def desktop_entry(server: ServerCommand) -> dict[str, Any]:
    entry: dict[str, Any] = {"command": server.command, "args": list(server.args)}
    if server.env:
        entry["env"] = dict(server.env)
    return entry


def project_entry(server: ServerCommand) -> dict[str, Any]:
    """An entry of Claude Code's `.mcp.json`, in the shape `claude mcp add -s project`
    writes. A project file is often committed, so a key goes in as `${VAR}`, which Claude
    Code expands from its own environment, never as its value."""
    env = {name: f"${{{name}}}" for name in server.env}
    return {"type": "stdio", "command": server.command, "args": list(server.args), "env": env}


def claude_mcp_add(claude: str, name: str, server: ServerCommand) -> list[str]:
    """`claude mcp add` as Claude Code's CLI takes it: the name first (its `-e` takes every
    word up to the next option), then the command after `--` so that the server's own flags
    are not read as the CLI's."""
    env_options = [part for key, value in server.env.items() for part in ("-e", f"{key}={value}")]
    return [claude, "mcp", "add", name, *env_options, "--", *server.argv]


def desktop_config_path(system: str, home: Path, environ: Mapping[str, str]) -> Path:
    """Where Claude Desktop reads its configuration on `system` (platform.system())."""
    if system == "Darwin":
        return home / "Library" / "Application Support" / "Claude" / DESKTOP_FILE
    if system == "Windows":
        appdata = environ.get("APPDATA") or str(home / "AppData" / "Roaming")
        return Path(appdata) / "Claude" / DESKTOP_FILE
    config = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(config) / "Claude" / DESKTOP_FILE


@dataclass(frozen=True)
class Merged:
    text: str
    change: str  # "added" | "replaced" | "unchanged"


def merge_entry(existing: str | None, where: str, name: str, entry: dict[str, Any]) -> Merged:
    """The configuration file `existing` (None: no file yet) with server `name` set to
    `entry`, every other key and server kept in its order. A file that is not a JSON object
    with an object of servers is refused: it is the user's, and guessing could lose it."""
    config: dict[str, Any] = {}
    if existing is not None and existing.strip():
        try:
            parsed = json.loads(existing)
        except json.JSONDecodeError as exc:
            raise SetupError(
                f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                f"{exc.colno}); nothing was changed. Fix the file, or move it aside to start "
                "a new one, and run this again."
            ) from exc
        if not isinstance(parsed, dict):
            raise SetupError(
                f"{where} holds a JSON {type(parsed).__name__}, not an object; nothing was "
                "changed. Fix the file, or move it aside, and run this again."
            )
        config = parsed
    servers = config.setdefault(SERVERS_KEY, {})
    if not isinstance(servers, dict):
        raise SetupError(
            f'"{SERVERS_KEY}" in {where} is a JSON {type(servers).__name__}, not an object of '
            "servers; nothing was changed. Fix the file and run this again."
        )
    change = "added" if name not in servers else "replaced"
    if servers.get(name) == entry:
        change = "unchanged"
    servers[name] = entry
    return Merged(json.dumps(config, indent=2, ensure_ascii=False) + "\n", change)


def mask(value: str) -> str:
    """A secret as it may be shown: enough to recognise, not enough to use."""
    return value[:7] + "…" if len(value) > 12 else "…"


def masked(server: ServerCommand) -> ServerCommand:
    return ServerCommand(
        server.command, server.args, {key: mask(value) for key, value in server.env.items()}
    )
