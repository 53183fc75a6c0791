"""The Claude Desktop bundle (`make mcpb`) and the MCP registry's entry (server.json).

The bundle is built with the pinned official mcpb CLI, unpacked, its `mcp_config` resolved by
the mcpb package's own code (as Claude Desktop resolves it), and the server started exactly
so and driven by a real MCP client over stdio. That needs Node.js and npm, and is skipped
with the reason when they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from corpus_cache.cli.main import build_parser, settings_from_args
from corpus_cache.config import DEFAULT_MODEL
from support.corpus_fixture import write_corpus

ROOT = Path(__file__).resolve().parents[1]
MCPB_PACKAGE = ROOT / ".tools" / "npm" / "node_modules" / "@anthropic-ai" / "mcpb"
MCPB = ROOT / ".tools" / "npm" / "node_modules" / ".bin" / "mcpb"
RESOLVE = ROOT / "tests" / "support" / "mcpb_config.mjs"
TOOLS = ["ask", "search", "list_documents", "read_document", "cache_status", "refresh"]


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bundle" / "check.py"), "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )


def copy_described_files(target: Path) -> Path:
    for name in ("pyproject.toml", "README.md", "server.json", "bundle/manifest.json",
                 "bundle/registry/server.schema.json"):  # fmt: skip
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)
    return target


def test_server_json_follows_the_registry_schema_and_names_this_package() -> None:
    done = check(ROOT)
    assert done.returncode == 0, done.stderr


def test_a_server_json_the_registry_would_refuse_is_reported(tmp_path: Path) -> None:
    root = copy_described_files(tmp_path)
    entry = json.loads((root / "server.json").read_text())
    entry["description"] = "x" * 101
    entry["name"] = "corpus-cache"
    (root / "server.json").write_text(json.dumps(entry))
    done = check(root)
    assert done.returncode == 1
    assert "server.json: description: " in done.stderr
    assert "server.json: name: " in done.stderr


def test_a_version_that_disagrees_with_pyproject_is_reported(tmp_path: Path) -> None:
    root = copy_described_files(tmp_path)
    pyproject = root / "pyproject.toml"
    version = tomllib.loads(pyproject.read_text())["project"]["version"]
    pyproject.write_text(pyproject.read_text().replace(f'version = "{version}"', 'version = "9.9"'))
    done = check(root)
    assert done.returncode == 1
    assert f"server.json: version '{version}', pyproject.toml '9.9'" in done.stderr
    assert f"PyPI package version '{version}'" in done.stderr
    assert f"bundle/manifest.json: version '{version}', not '9.9'" in done.stderr


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make mcpb`'s bundle, built once, in a folder of this session's own."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("the bundle needs Node.js and npm (the mcpb CLI is an npm package)")
    if not MCPB.exists():
        installed = subprocess.run(
            ["make", "-s", "-C", str(ROOT), ".tools/npm/node_modules/.bin/mcpb"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if installed.returncode != 0:
            pytest.skip(f"could not install the mcpb CLI from npm: {installed.stderr[-500:]}")
    out = tmp_path_factory.mktemp("mcpb")
    built = subprocess.run(
        [sys.executable, str(ROOT / "bundle" / "build.py"), "--mcpb", str(MCPB),
         "--out", str(out / "dist"), "--stage", str(out / "stage")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "Manifest schema validation passes!" in built.stderr
    return Path(built.stdout.strip())


def resolved_config(extension: Path, user_config: dict[str, Any]) -> dict[str, Any]:
    """The command, arguments and environment Claude Desktop would start the server with."""
    done = subprocess.run(
        ["node", str(RESOLVE), str(MCPB_PACKAGE / "dist" / "index.js"),
         str(extension / "manifest.json"), str(extension), json.dumps(user_config)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    config: dict[str, Any] = json.loads(done.stdout)
    return config


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_unpacked_bundle_starts_as_desktop_starts_it_and_answers_offline(
    bundle: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        assert "manifest.json" in names
        assert "uv.lock" in names
        assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", ".venv"))]
        extension = tmp_path / "Claude Extensions" / "corpus-cache"
        archive.extractall(extension)
    corpus = write_corpus(tmp_path / "my documents")

    # A key the user gives goes to the environment, never to the command line.
    keyed = resolved_config(extension, {"corpus": str(corpus), "anthropic_api_key": "sk-x"})
    assert keyed["env"] == {"ANTHROPIC_API_KEY": "sk-x"}
    assert "sk-x" not in keyed["args"]

    # The user picked a folder and left the model and the key as they were.
    config = resolved_config(extension, {"corpus": str(corpus)})
    assert config["command"] == "uv"
    assert config["env"] == {"ANTHROPIC_API_KEY": ""}
    assert config["args"][:3] == ["run", "--directory", str(extension)]
    assert config["args"][-4:] == ["--corpus", str(corpus), "--model", "claude-sonnet-5-5"]

    # Desktop's environment plus the manifest's; uv from this environment, offline (the tests
    # reach nothing but loopback), the ledger in this test's folder.
    uv_folder = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "VIRTUAL_ENV"))}
    env |= config["env"] | {
        "PATH": f"{uv_folder}{os.pathsep}{env.get('PATH', '')}",
        "UV_OFFLINE": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        "CORPUS_CACHE_STATE_DIR": str(tmp_path / "state"),
        # A first start compiles every module it imports: on a busy machine that outlasts
        # the 10 s a tool waits for the engine by default.
        "CORPUS_CACHE_INDEX_WAIT": "60",
    }
    command = shutil.which(config["command"], path=env["PATH"])
    assert command, "uv is a dev dependency: it should be beside this Python"
    params = StdioServerParameters(command=command, args=config["args"], env=env)
    async with Client(params) as client:
        assert [tool.name for tool in (await client.list_tools()).tools] == TOOLS
        answer = await client.call_tool("ask", {"question": "When are deploys frozen?"})
        assert answer.structured_content["backend"] == "offline-emulator"  # type: ignore[index]
        assert any(
            citation["path"] == "deploys.md"
            for citation in answer.structured_content["citations"]  # type: ignore[index]
        )


def test_an_emptied_model_field_serves_the_default_model(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--corpus", str(tmp_path), "--model", ""])
    assert settings_from_args(args).model == DEFAULT_MODEL
