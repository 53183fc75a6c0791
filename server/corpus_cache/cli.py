"""The `corpus-cache` command."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .catalog import CatalogError, load_catalog


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _emulator(args: argparse.Namespace) -> int:
    from .emulator.runner import serve_forever

    if not _is_loopback(args.host) and not args.allow_remote:
        print(
            f"refusing to bind {args.host}: the emulator accepts any API key and is meant for "
            "loopback only; pass --allow-remote if you really mean it",
            file=sys.stderr,
        )
        return 2
    catalog = load_catalog(args.models_file)
    print(
        f"corpus-cache emulator: http://{args.host}:{args.port} "
        f"(offline Anthropic Messages API, models as of {catalog.as_of}); "
        f"use ANTHROPIC_BASE_URL=http://{args.host}:{args.port} with any ANTHROPIC_API_KEY",
        file=sys.stderr,
    )
    serve_forever(args.host, args.port, catalog)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corpus-cache",
        description="Pack a folder of documents into Anthropic prompt-cache blocks "
        "and serve it over MCP.",
    )
    parser.add_argument("--version", action="version", version=f"corpus-cache {__version__}")
    parser.add_argument(
        "--models-file",
        type=Path,
        default=None,
        help="a TOML file that overrides or adds model table entries "
        "(default: $CORPUS_CACHE_MODELS_FILE)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    emulator = commands.add_parser(
        "emulator",
        help="serve an offline emulator of the Anthropic Messages API",
        description="Serve an offline emulator of the Anthropic Messages API with faithful "
        "prompt-cache accounting. It does not generate language: answers are extractive.",
    )
    emulator.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)"
    )
    emulator.add_argument("--port", type=int, default=8787, help="port (default: 8787)")
    emulator.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    emulator.set_defaults(run=_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CatalogError as exc:
        print(f"corpus-cache: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
