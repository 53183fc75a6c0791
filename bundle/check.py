"""`make lint`'s check of what describes the package to the outside: server.json (the MCP
registry's entry) against the registry's published schema, vendored in bundle/registry/, and
the names and versions in server.json and the Desktop bundle's manifest against pyproject.toml.

    python bundle/check.py [--root DIR]     # prints each problem; exits 1 if there is any
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path("bundle") / "registry" / "server.schema.json"


def problems(root: Path) -> list[str]:
    """What is wrong with server.json and bundle/manifest.json under `root`, in words."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    entry: dict[str, Any] = json.loads((root / "server.json").read_text())
    schema = json.loads((root / SCHEMA).read_text())
    found = [
        f"server.json: {'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in Draft7Validator(
            schema, format_checker=Draft7Validator.FORMAT_CHECKER
        ).iter_errors(entry)
    ]
    if entry.get("version") != version:
        found.append(f"server.json: version {entry.get('version')!r}, pyproject.toml {version!r}")
    for package in entry.get("packages", []):
        if package.get("registryType") != "pypi":
            continue
        if package.get("identifier") != name:
            found.append(f"server.json: PyPI package {package.get('identifier')!r}, not {name!r}")
        if package.get("version") != version:
            found.append(
                f"server.json: PyPI package version {package.get('version')!r}, "
                f"pyproject.toml {version!r}"
            )
    # The registry accepts a PyPI package only if its description names the server.
    if f"mcp-name: {entry.get('name')}" not in (root / "README.md").read_text():
        found.append(f"README.md (the PyPI description) lacks 'mcp-name: {entry.get('name')}'")
    manifest = json.loads((root / "bundle" / "manifest.json").read_text())
    if manifest.get("version") != version:
        found.append(f"bundle/manifest.json: version {manifest.get('version')!r}, not {version!r}")
    if manifest.get("name") != name:
        found.append(f"bundle/manifest.json: name {manifest.get('name')!r}, not {name!r}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    found = problems(parser.parse_args().root)
    for problem in found:
        print(problem, file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
