"""`corpus-cache install`: the entries it computes, and the command run as a user runs it,
with HOME in a temporary folder and a stand-in `claude` where the real CLI would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corpus_cache.cli.client_config import (
    claude_mcp_add,
    desktop_config_path,
    desktop_entry,
    is_ephemeral,
    merge_entry,
    project_entry,
    server_command,
)
from corpus_cache.errors import SetupError

PYTHON = Path(sys.executable).absolute()
KEY = "sk-ant-api03-secret-value-0001"


def install(
    args: list[str], home: Path, cwd: Path, path: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "XDG_"))}
    environ.update(HOME=str(home), PATH=path or os.defpath, CORPUS_CACHE_STATE_DIR=str(home))
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "corpus_cache", "install", *args],
        capture_output=True, text=True, env=environ, cwd=cwd, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    return tmp_path / "docs"


def desktop_file(home: Path) -> Path:
    return home / ".config" / "Claude" / "claude_desktop_config.json"


def expected_args(corpus: Path) -> list[str]:
    return ["-m", "corpus_cache", "serve", "--corpus", str(corpus.resolve())]


# --- what is computed -------------------------------------------------------------------


def test_the_server_command_is_absolute_and_names_the_model() -> None:
    server = server_command(PYTHON, Path("/data/docs"), "claude-haiku-4-5")
    assert server.argv == [
        str(PYTHON), "-m", "corpus_cache", "serve", "--corpus", "/data/docs",
        "--model", "claude-haiku-4-5",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="absolute"):
        server_command(PYTHON, Path("docs"))


@pytest.mark.parametrize(
    ("system", "environ", "expected"),
    [
        ("Darwin", {}, "/Users/ada/Library/Application Support/Claude/claude_desktop_config.json"),
        ("Windows", {"APPDATA": "/c/Users/ada/AppData/Roaming"},
         "/c/Users/ada/AppData/Roaming/Claude/claude_desktop_config.json"),
        ("Windows", {}, "/Users/ada/AppData/Roaming/Claude/claude_desktop_config.json"),
        ("Linux", {}, "/Users/ada/.config/Claude/claude_desktop_config.json"),
        ("Linux", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/Claude/claude_desktop_config.json"),
    ],
)  # fmt: skip
def test_claude_desktop_keeps_its_file_where_each_platform_puts_it(
    system: str, environ: dict[str, str], expected: str
) -> None:
    assert desktop_config_path(system, Path("/Users/ada"), environ) == Path(expected)


def test_claude_mcp_add_puts_the_name_before_the_variadic_env_option() -> None:
    server = server_command(PYTHON, Path("/d"), env={"ANTHROPIC_API_KEY": KEY})
    argv = claude_mcp_add("claude", "corpus", server)
    assert argv[:6] == ["claude", "mcp", "add", "corpus", "-e", f"ANTHROPIC_API_KEY={KEY}"]
    assert argv[6:] == ["--", str(PYTHON), *expected_args(Path("/d"))]


def test_a_project_file_names_a_key_by_its_variable_never_its_value() -> None:
    server = server_command(PYTHON, Path("/d"), env={"ANTHROPIC_API_KEY": KEY})
    assert project_entry(server)["env"] == {"ANTHROPIC_API_KEY": "${ANTHROPIC_API_KEY}"}
    assert desktop_entry(server)["env"] == {"ANTHROPIC_API_KEY": KEY}


def test_merging_keeps_every_other_key_and_server_in_order() -> None:
    existing = json.dumps(
        {"globalShortcut": "Alt+Space", "mcpServers": {"a": {"command": "a"}, "z": {}}}
    )
    merged = merge_entry(existing, "f.json", "corpus", {"command": "x"})
    assert merged.change == "added"
    config = json.loads(merged.text)
    assert list(config) == ["globalShortcut", "mcpServers"]
    assert list(config["mcpServers"]) == ["a", "z", "corpus"]
    assert merge_entry(merged.text, "f.json", "corpus", {"command": "x"}).change == "unchanged"
    assert merge_entry(merged.text, "f.json", "corpus", {"command": "y"}).change == "replaced"
    fresh = merge_entry(None, "f.json", "c", {})
    assert fresh.text == '{\n  "mcpServers": {\n    "c": {}\n  }\n}\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"mcpServers": {"a": 1,}}', "is not valid JSON (Expecting property name"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"mcpServers": []}', '"mcpServers" in f.json is a JSON list'),
    ],
)
def test_a_malformed_file_is_refused_with_what_to_do(text: str, message: str) -> None:
    with pytest.raises(SetupError, match="nothing was changed") as refused:
        merge_entry(text, "f.json", "corpus", {})
    assert message in str(refused.value)


def test_a_uvx_environment_is_recognised_as_temporary() -> None:
    assert is_ephemeral(Path("/home/ada/.cache/uv/archive-v0/ZS57WTVSI5"))
    assert not is_ephemeral(Path("/home/ada/.local/pipx/venvs/corpus-cache"))


# --- the command --------------------------------------------------------------------------


def test_claude_desktop_dry_run_prints_exactly_what_install_writes(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    dry = install(["claude-desktop", "--corpus", str(corpus), "--dry-run"], home, tmp_path)
    assert dry.returncode == 0, dry.stderr
    header, _, shown = dry.stdout.partition(":\n")
    assert header == f"Would write {desktop_file(home)}"
    assert not desktop_file(home).exists()  # a dry run changes nothing

    done = install(["claude-desktop", "--corpus", str(corpus)], home, tmp_path)
    assert done.returncode == 0, done.stderr
    assert desktop_file(home).read_text() == shown
    entry = json.loads(shown)["mcpServers"]["corpus"]
    assert entry == {"command": str(PYTHON), "args": expected_args(corpus)}
    assert "Restart Claude Desktop" in done.stdout
    assert not list(desktop_file(home).parent.glob("*.bak-*"))  # nothing to back up


def test_claude_desktop_install_keeps_other_servers_and_backs_up_the_file(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    config = desktop_file(home)
    config.parent.mkdir(parents=True)
    before = '{"mcpServers": {"weather": {"command": "/bin/weather"}}, "theme": "dark"}\n'
    config.write_text(before)
    args = ["claude-desktop", "--corpus", str(corpus), "--name", "handbook"]
    done = install([*args, "--model", "claude-haiku-4-5"], home, tmp_path)
    assert done.returncode == 0, done.stderr
    after = json.loads(config.read_text())
    assert after["theme"] == "dark"
    assert after["mcpServers"]["weather"] == {"command": "/bin/weather"}
    assert after["mcpServers"]["handbook"]["args"][-2:] == ["--model", "claude-haiku-4-5"]
    backups = list(config.parent.glob("claude_desktop_config.json.bak-*"))
    assert [b.read_text() for b in backups] == [before]
    assert f"Backed up claude_desktop_config.json to {backups[0]}" in done.stdout
    assert not list(config.parent.glob(".*.tmp"))  # the atomic write left nothing behind

    again = install([*args, "--model", "claude-haiku-4-5"], home, tmp_path)
    assert "nothing to change" in again.stdout
    assert len(list(config.parent.glob("*.bak-*"))) == 1


def test_a_malformed_desktop_config_is_left_untouched(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    config = desktop_file(home)
    config.parent.mkdir(parents=True)
    config.write_text('{"mcpServers": {')
    refused = install(["claude-desktop", "--corpus", str(corpus)], home, tmp_path)
    assert refused.returncode == 2
    assert "is not valid JSON" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert config.read_text() == '{"mcpServers": {'
    assert sorted(p.name for p in config.parent.iterdir()) == ["claude_desktop_config.json"]


def test_an_api_key_is_written_for_claude_desktop_but_never_shown(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    args = ["claude-desktop", "--corpus", str(corpus), "--with-api-key"]
    env = {"ANTHROPIC_API_KEY": KEY}
    dry = install([*args, "--dry-run"], home, tmp_path, env=env)
    assert KEY not in dry.stdout
    assert '"ANTHROPIC_API_KEY": "sk-ant-…"' in dry.stdout
    install(args, home, tmp_path, env=env)
    written = json.loads(desktop_file(home).read_text())
    assert written["mcpServers"]["corpus"]["env"] == {"ANTHROPIC_API_KEY": KEY}
    missing = install(args, home, tmp_path)
    assert missing.returncode == 2
    assert "ANTHROPIC_API_KEY is not set" in missing.stderr


def test_claude_code_without_its_cli_gets_a_project_mcp_json(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / ".mcp.json").write_text('{"mcpServers": {"other": {"command": "x"}}}')
    dry = install(["claude-code", "--corpus", str(corpus), "--dry-run"], home, project)
    assert dry.returncode == 0, dry.stderr
    header, _, shown = dry.stdout.partition(":\n")
    assert header == f"Would write {project / '.mcp.json'} (after backing up the existing file)"
    done = install(["claude-code", "--corpus", str(corpus)], home, project)
    assert done.returncode == 0, done.stderr
    assert (project / ".mcp.json").read_text() == shown
    servers = json.loads(shown)["mcpServers"]
    assert servers["other"] == {"command": "x"}
    assert servers["corpus"] == {
        "type": "stdio", "command": str(PYTHON), "args": expected_args(corpus), "env": {},
    }  # fmt: skip
    assert len(list(project.glob(".mcp.json.bak-*"))) == 1


def test_claude_code_is_configured_through_its_own_cli_when_present(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "claude"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {calls}\necho "Added stdio MCP server"\n')
    fake.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.defpath}"
    args = ["claude-code", "--corpus", str(corpus), "--name", "docs"]

    dry = install([*args, "--dry-run"], home, tmp_path, path=path)
    assert dry.stdout.strip() == (
        f"Would run: claude mcp add docs -- {PYTHON} -m corpus_cache serve --corpus "
        f"{corpus.resolve()}"
    )
    assert not calls.exists()

    done = install(args, home, tmp_path, path=path)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        "mcp", "add", "docs", "--", str(PYTHON), *expected_args(corpus),
    ]  # fmt: skip
    assert "Added stdio MCP server" in done.stdout
    assert not (tmp_path / ".mcp.json").exists()

    refusal = "MCP server docs already exists in local config"
    fake.write_text(f"#!/bin/sh\necho '{refusal}' >&2\nexit 1\n")
    failed = install(args, home, tmp_path, path=path)
    assert failed.returncode == 2
    assert "already exists" in failed.stderr
    assert "claude mcp remove docs" in failed.stderr


def test_the_clients_page_shows_what_install_prints(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    readme = (Path(__file__).parent.parent / "docs" / "clients.md").read_text()
    project = tmp_path / "project"
    project.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "claude").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "claude").chmod(0o755)
    placeholders = {
        str(PYTHON): "/path/to/corpus-cache/.venv/bin/python",
        str(corpus.resolve()): "/path/to/your/folder",
        str(project): "/path/to/your/project",
        str(home): "/home/you",
    }
    runs = [
        ("claude-code", f"{bin_dir}{os.pathsep}{os.defpath}"),
        ("claude-code", ""),
        ("claude-desktop", ""),
    ]
    for client, path in runs:
        dry = install([client, "--corpus", str(corpus), "--dry-run"], home, project, path=path)
        assert dry.returncode == 0, dry.stderr
        shown = dry.stdout
        for real, placeholder in placeholders.items():
            shown = shown.replace(real, placeholder)
        assert shown in readme, f"docs/clients.md does not show this output of {client}:\n{shown}"
