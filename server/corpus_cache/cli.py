"""The `corpus-cache` command."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from . import __version__
from .catalog import CatalogError, UnknownModelError, load_catalog
from .config import DEFAULT_MODEL, Settings
from .corpus.scan import CorpusNotFoundError
from .errors import CorpusCacheError


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


def _settings(args: argparse.Namespace) -> Settings:
    given = {
        "corpus": getattr(args, "corpus", None),
        "model": getattr(args, "model", None),
        "offline": True if getattr(args, "offline", False) else None,
        "models_file": args.models_file,
    }
    return Settings(**{k: v for k, v in given.items() if v is not None})


def _serve(args: argparse.Namespace) -> int:
    from .mcp_server import build_server
    from .runtime import running_engine

    settings = _settings(args)

    async def run() -> None:
        async with running_engine(settings) as engine:
            await build_server(engine).run_stdio_async()

    anyio.run(run)
    return 0


def _ask(args: argparse.Namespace) -> int:
    from .results import ask_result, render_answer
    from .runtime import running_engine

    settings = _settings(args)

    async def run() -> str:
        async with running_engine(settings) as engine:
            result = ask_result(await engine.ask(args.question))
        return result.model_dump_json(indent=2) if args.json else render_answer(result)

    print(anyio.run(run))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from .config import Settings as _S
    from .ledger import Ledger

    state_dir = _S.model_fields["state_dir"].get_default(call_default_factory=True)
    env_dir = os.environ.get("CORPUS_CACHE_STATE_DIR")
    ledger_path = Path(env_dir or state_dir) / "ledger.sqlite3"
    if not ledger_path.exists():
        print(f"no ledger yet at {ledger_path}: nothing has been asked", file=sys.stderr)
        return 0
    ledger = Ledger(ledger_path)
    corpus = str(args.corpus.expanduser().resolve()) if args.corpus else None
    day = time.time() - 86_400
    periods = {
        "last 24 hours": ledger.totals(corpus, since=day),
        "last 7 days": ledger.totals(corpus, since=time.time() - 7 * 86_400),
        "all time": ledger.totals(corpus),
    }
    ledger.close()
    if args.json:
        print(json.dumps({name: t.as_dict() for name, t in periods.items()}, indent=2))
        return 0
    print(f"{'':16}{'requests':>9}{'hit rate':>10}{'spent':>12}{'uncached':>12}{'saved':>12}")
    for name, t in periods.items():
        print(
            f"{name:16}{t.requests:>9}{t.hit_rate:>10.1%}{t.cost_usd:>12.4f}"
            f"{t.uncached_cost_usd:>12.4f}{t.saved_usd:>12.4f}"
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    corpus = args.corpus.expanduser().resolve()
    if not corpus.is_dir():
        print(f"corpus-cache: demo corpus not found: {corpus}", file=sys.stderr)
        return 2
    return demo_main(corpus)


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

    def corpus_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--corpus", type=Path, required=True, help="the folder of documents")
        command.add_argument("--model", help=f"Claude model id (default: {DEFAULT_MODEL})")
        command.add_argument(
            "--offline",
            action="store_true",
            help="answer with the built-in emulator even if ANTHROPIC_API_KEY is set",
        )

    serve = commands.add_parser(
        "serve",
        help="serve a folder over MCP (stdio)",
        description="Serve a folder of documents over MCP on stdio, for Claude Desktop and "
        "Claude Code. Without ANTHROPIC_API_KEY, answers come from the offline emulator.",
    )
    corpus_options(serve)
    serve.set_defaults(run=_serve)

    ask = commands.add_parser("ask", help="ask one question about a folder and print the answer")
    corpus_options(ask)
    ask.add_argument("question", help="the question")
    ask.add_argument("--json", action="store_true", help="print the structured result")
    ask.set_defaults(run=_ask)

    stats = commands.add_parser(
        "stats", help="requests, hit rate, dollars spent and saved, from the ledger"
    )
    stats.add_argument("--corpus", type=Path, help="only this corpus (default: all)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_stats)

    demo = commands.add_parser(
        "demo",
        help="serve a folder over stdio, ask two questions with an MCP client, show the savings",
    )
    demo.add_argument(
        "--corpus", type=Path, default=Path("corpora/handbook"), help="default: corpora/handbook"
    )
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in ("httpx", "httpx2", "bm25s", "uvicorn", "uvicorn.error", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (CatalogError, UnknownModelError, CorpusNotFoundError, CorpusCacheError) as exc:
        print(f"corpus-cache: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
