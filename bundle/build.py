"""`make mcpb`: the Claude Desktop bundle (.mcpb), packed by the official mcpb CLI.

The bundle carries the server's source, pyproject.toml and uv.lock, and its manifest starts
the server with `uv run --frozen`, which installs exactly the locked dependencies on first
start (docs/clients.md says why the bundle does not carry them). The manifest is checked with
`mcpb validate` before `mcpb pack` writes `dist/corpus-cache-<version>.mcpb`.

    python bundle/build.py --mcpb .tools/npm/node_modules/.bin/mcpb [--out dist]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "bundle" / "manifest.json"
# What `uv run` needs to build and install the project: pyproject.toml names README.md.
FILES = ["pyproject.toml", "uv.lock", "README.md"]
PACKAGE = Path("server") / "corpus_cache"


def project_version(root: Path = ROOT) -> str:
    return str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])


def stage(folder: Path, root: Path = ROOT) -> Path:
    """Lays out the bundle's files in `folder` (emptied first) and returns it."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copy2(MANIFEST, folder / "manifest.json")
    for name in FILES:
        shutil.copy2(root / name, folder / name)
    shutil.copytree(
        root / PACKAGE, folder / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return folder


def run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    print(done.stdout.strip(), file=sys.stderr)


def build(mcpb: Path, out: Path, staging: Path) -> Path:
    """Stages, validates and packs the bundle; returns the .mcpb file's path."""
    version = project_version()
    manifest_version = json.loads(MANIFEST.read_text())["version"]
    if manifest_version != version:
        sys.exit(f"bundle/manifest.json says {manifest_version}, pyproject.toml {version}")
    folder = stage(staging)
    run([str(mcpb), "validate", str(folder / "manifest.json")])
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"corpus-cache-{version}.mcpb"
    target.unlink(missing_ok=True)
    run([str(mcpb), "pack", str(folder), str(target)])
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mcpb", type=Path, required=True, help="the mcpb CLI")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the .mcpb")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "mcpb", help="staging")
    args = parser.parse_args()
    print(build(args.mcpb, args.out, args.stage))


if __name__ == "__main__":
    main()
