"""`corpus-cache install claude-code|claude-desktop`: configure a client to start this
server, or with --dry-run show exactly what would be run or written.

Claude Code is configured through its own `claude mcp add` when that CLI is on PATH, and
otherwise through `.mcp.json` in the current folder; Claude Desktop through its
`claude_desktop_config.json`. A file is merged (every other server kept), backed up first,
and replaced atomically, so an interrupted install never leaves half a file.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from corpus_cache.cli.client_config import (
    API_KEY_VAR,
    PROJECT_FILE,
    ServerCommand,
    claude_mcp_add,
    desktop_config_path,
    desktop_entry,
    is_ephemeral,
    masked,
    merge_entry,
    project_entry,
    server_command,
)
from corpus_cache.errors import SetupError

CLIENTS = ("claude-code", "claude-desktop")


def add_install_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    install = commands.add_parser(
        "install",
        help="configure Claude Code or Claude Desktop to start this server on a folder",
        description="Configure Claude Code (through `claude mcp add`, or .mcp.json here when "
        "the claude CLI is not on PATH) or Claude Desktop (claude_desktop_config.json) to "
        "start `corpus-cache serve` on a folder, with absolute paths. Other servers' entries "
        "are kept and the file is backed up first.",
    )
    install.add_argument("client", choices=CLIENTS, help="the client to configure")
    install.add_argument("--corpus", type=Path, required=True, help="the folder of documents")
    install.add_argument("--name", default="corpus", help="the server's name (default: corpus)")
    install.add_argument("--model", help="Claude model id (default: the server's default)")
    install.add_argument(
        "--with-api-key",
        action="store_true",
        help=f"pass ${API_KEY_VAR} from this shell to the server (Claude Desktop does not "
        "inherit your shell's environment); without it, answers come from the offline emulator",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="print what would be run or written; change nothing"
    )
    install.set_defaults(run=run_install)


def run_install(args: argparse.Namespace) -> int:
    server = _server(args)
    if args.client == "claude-code":
        claude = shutil.which("claude")
        if claude is not None:
            return _claude_mcp_add(claude, args.name, server, dry_run=args.dry_run)
        target = Path.cwd() / PROJECT_FILE
        entry = project_entry(server)
        after = "Claude Code reads it when started in this folder (it asks before trusting it)."
    else:
        target = desktop_config_path(platform.system(), Path.home(), os.environ)
        entry = desktop_entry(server)
        after = "Restart Claude Desktop to load it."
    existing = target.read_text(encoding="utf-8") if target.exists() else None
    merged = merge_entry(existing, str(target), args.name, entry)
    if merged.change == "unchanged":
        _out(f"{target} already has this entry for {args.name!r}: nothing to change.")
        return 0
    if args.dry_run:
        shown = merge_entry(existing, str(target), args.name, _shown_entry(args.client, server))
        backup = " (after backing up the existing file)" if existing is not None else ""
        _out(f"Would write {target}{backup}:\n{shown.text.rstrip()}")
        return 0
    backup_path = write_config(target, merged.text)
    if backup_path is not None:
        _out(f"Backed up {target.name} to {backup_path}")
    _out(f"{merged.change.capitalize()} {args.name!r} in {target}. {after}")
    return 0


def _server(args: argparse.Namespace) -> ServerCommand:
    corpus = args.corpus.expanduser().resolve()
    if not corpus.is_dir():
        raise SetupError(f"corpus folder not found: {corpus}")
    env = {}
    if args.with_api_key:
        key = os.environ.get(API_KEY_VAR)
        if not key:
            raise SetupError(f"--with-api-key: {API_KEY_VAR} is not set in this shell")
        env[API_KEY_VAR] = key
    if is_ephemeral(Path(sys.prefix)):
        print(
            "corpus-cache: warning: this runs from a temporary uvx environment that uv may "
            "delete, and the client would then fail to start the server. Install it where it "
            "stays (`pipx install .` or `uv tool install .` in the clone) and run "
            "`corpus-cache install` from there.",
            file=sys.stderr,
        )
    # Not resolved: a virtual environment's python is a symlink out of the environment, and
    # only the link finds the environment's packages.
    python = Path(sys.executable).absolute()
    return server_command(python, corpus, args.model, env)


def _shown_entry(client: str, server: ServerCommand) -> dict[str, object]:
    return project_entry(server) if client == "claude-code" else desktop_entry(masked(server))


def _claude_mcp_add(claude: str, name: str, server: ServerCommand, *, dry_run: bool) -> int:
    shown = shlex.join(claude_mcp_add(Path(claude).name, name, masked(server)))
    if dry_run:
        _out(f"Would run: {shown}")
        return 0
    _out(f"Running: {shown}")
    done = subprocess.run(
        claude_mcp_add(claude, name, server), capture_output=True, text=True, check=False
    )
    if done.stdout.strip():
        _out(done.stdout.strip())
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise SetupError(
            f"`claude mcp add` failed ({detail}). If a server named {name!r} exists already, "
            f"remove it with `claude mcp remove {name}` or pick another --name."
        )
    return 0


def write_config(path: Path, text: str) -> Path | None:
    """Replace `path` with `text` atomically, after copying the existing file to a
    timestamped backup beside it. Returns the backup's path, if there was a file."""
    if path.is_symlink():  # a dotfile manager's link stays a link; its target is replaced
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    mode = 0o600
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        backup = _backup_path(path)
        shutil.copy2(path, backup)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return backup


def _backup_path(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    number = 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{number}")
    return candidate


def _out(text: str) -> None:
    print(text, flush=True)
