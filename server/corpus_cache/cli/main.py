"""The `corpus-cache` command."""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from corpus_cache import __version__
from corpus_cache.cli.install import add_install_command
from corpus_cache.config import DEFAULT_MODEL, Settings
from corpus_cache.errors import CorpusCacheError, SetupError
from corpus_cache.models.catalog import load_catalog

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from corpus_cache.engine.preflight import Preflight
    from corpus_cache.mcp_surface.startup import EngineSlot

log = logging.getLogger(__name__)

SIGTERM_GRACE = 5.0  # seconds a clean end after SIGTERM may take before the process just ends

# How long the engine's imports wait for the server's first answer before they begin
# anyway (no client yet): they would slow that answer down (see `_run_engine`).
FIRST_ANSWER_WAIT = 0.5
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8765


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _emulator(args: argparse.Namespace) -> int:
    from corpus_cache.emulator.runner import make_service, serve_forever

    if not _is_loopback(args.host) and not args.allow_remote:
        print(
            f"refusing to bind {args.host}: the emulator accepts any API key and is meant for "
            "loopback only; pass --allow-remote if you really mean it",
            file=sys.stderr,
        )
        return 2
    if args.time_scale <= 0:
        print("--time-scale: expected a positive number", file=sys.stderr)
        return 2
    catalog = load_catalog(args.models_file)
    service = make_service(
        catalog,
        tier=args.tier,
        limits_file=args.limits,
        latency=args.latency,
        time_scale=args.time_scale,
    )
    tier = service.limiter.config.tier
    limits = f"rate limits of tier {tier}" if tier is not None else "no rate limits"
    latency = "no latency" if service.latency is None else "realistic latency"
    if service.latency is not None and args.time_scale != 1:
        latency += f" divided by {args.time_scale:g}"
    if tier is not None and args.time_scale != 1:
        limits += f" refilling {args.time_scale:g} times as fast"
    print(
        f"corpus-cache emulator: http://{args.host}:{args.port} "
        f"(offline Anthropic Messages API, models as of {catalog.as_of}; {limits}, "
        f"{latency}); "
        f"use ANTHROPIC_BASE_URL=http://{args.host}:{args.port} with any ANTHROPIC_API_KEY",
        file=sys.stderr,
    )
    serve_forever(args.host, args.port, catalog, service)
    return 0


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {
        "corpus": getattr(args, "corpus", None),
        # An empty --model (a Desktop bundle's emptied field) means the default one.
        "model": getattr(args, "model", None) or None,
        "offline": True if getattr(args, "offline", False) else None,
        "budget_tokens": getattr(args, "budget_tokens", None),
        "warm_question_usd": getattr(args, "warm_question_usd", None),
        "build_minutes": getattr(args, "build_minutes", None),
        "max_file_bytes": getattr(args, "max_file_bytes", None),
        "allow_secret_content": True if getattr(args, "allow_secret_content", False) else None,
        "allow_hard_links": True if getattr(args, "allow_hard_links", False) else None,
        "fan_out": getattr(args, "fan_out", None),
        "ttl": getattr(args, "ttl", None),
        "tier": getattr(args, "tier", None),
        "limits_file": getattr(args, "limits_file", None),
        "prewarm": True if getattr(args, "prewarm", False) else None,
        "keep_old_copies": True if getattr(args, "keep_old_copies", False) else None,
        "max_usd_per_day": getattr(args, "max_usd_per_day", None),
        "models_file": args.models_file,
        "ask_deadline": getattr(args, "ask_deadline", None),
        "watch": False if getattr(args, "no_watch", False) else None,
        "poll": True if getattr(args, "poll", False) else None,
        "debounce_ms": getattr(args, "debounce_ms", None),
        "auth_token": getattr(args, "auth_token", None),
    }
    return Settings(**{k: v for k, v in given.items() if v is not None})


def _serve(args: argparse.Namespace) -> int:
    """Answer MCP first, having imported only what the protocol needs; the engine's stack
    (the SDK, the emulator, the ledger; a second or more) loads and starts behind it
    (`mcp_surface/startup.py`). What would stop the engine's start is checked before."""
    settings = settings_from_args(args)
    _check_transport(args, settings)

    from corpus_cache.engine.preflight import preflight
    from corpus_cache.mcp_surface.server import build_server
    from corpus_cache.mcp_surface.startup import EngineSlot

    checked = preflight(settings)  # an unknown model or tier, a missing folder: said now

    async def run() -> None:
        slot = EngineSlot(settings, checked.model)
        server = build_server(slot)
        failed: list[Exception] = []
        engine_scope, engine_ended = anyio.CancelScope(), anyio.Event()

        async def engine() -> None:
            try:
                with engine_scope:
                    await _run_engine(slot, settings, checked)
            except Exception as exc:  # raised again below, not wrapped in the task group's
                failed.append(exc)
                group.cancel_scope.cancel()
            finally:
                engine_ended.set()

        async with anyio.create_task_group() as group:
            group.start_soon(engine)
            group.start_soon(_ended_by_sigterm, engine_scope, engine_ended)
            try:
                await _serve_mcp(server, args, settings)
            except Exception as exc:  # a port in use, say: said plainly, below
                failed.append(exc)
            group.cancel_scope.cancel()
        if failed:
            raise failed[0]

    anyio.run(run)
    return 0


async def _ended_by_sigterm(engine: anyio.CancelScope, engine_ended: anyio.Event) -> None:
    """End `serve` on SIGTERM, which a client that does not wait for the server to exit
    sends (the MCP stdio transport's shutdown): the engine first, as at the end of the
    input (the responses still being read are recorded, the ledger closed, the keeper's
    lease given up at once, where a kill leaves it to expire), for SIGTERM_GRACE seconds
    at most; then the process, without waiting for the protocol's reader, which may be
    blocked on an input the client never closed."""
    if sys.platform == "win32":  # no signal receiver there: a terminate is a kill
        return
    import signal

    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.info("SIGTERM: shutting down")
            engine.cancel()
            with anyio.move_on_after(SIGTERM_GRACE) as waited:
                await engine_ended.wait()
            logging.shutdown()
            os._exit(128 + signal.SIGTERM if waited.cancelled_caught else 0)


async def _run_engine(slot: EngineSlot, settings: Settings, checked: Preflight) -> None:
    """Load the engine's modules off the event loop, start the engine, hand it to the
    server, and keep it in step with its folder and warm until the server ends. A failure
    to start is kept for the tools to report (and logged); one after it, as before, ends
    the server."""
    # Imports hold the GIL in bursts of the switch interval: the server goes on answering
    # meanwhile, each answer slower by a few handoffs. The first (`initialize`, usually
    # waiting on stdin already) goes out before they begin.
    with anyio.move_on_after(FIRST_ANSWER_WAIT):
        await slot.first_answer.wait()
    await anyio.to_thread.run_sync(importlib.import_module, "corpus_cache.engine.runtime")
    from corpus_cache.engine.runtime import (
        keeping_the_cache,
        keeping_warm,
        running_engine,
        watching,
    )

    try:
        async with running_engine(settings, background=True, checked=checked) as engine:
            slot.attach(engine)  # before its first index can swap in a corpus
            async with (
                keeping_the_cache(engine),
                watching(engine),
                keeping_warm(engine, sleep=engine.sleep),
                engine.builder.running(),
            ):
                slot.arrive(engine)  # watched: what is saved from now on is seen
                await anyio.sleep_forever()
    except CorpusCacheError as exc:
        if slot.engine is not None:
            raise
        slot.fail(exc)
        log.error("the server could not start: %s", exc)


def _auth_token(settings: Settings) -> str | None:
    token = settings.auth_token.get_secret_value() if settings.auth_token else ""
    return token or None


def _check_transport(args: argparse.Namespace, settings: Settings) -> None:
    from corpus_cache.mcp_surface.http_transport import check_bind

    if args.transport == "http":
        check_bind(args.host or DEFAULT_HTTP_HOST, _auth_token(settings))
        return
    given = [flag for flag, value in (("--host", args.host), ("--port", args.port)) if value]
    if args.auth_token:
        given.append("--auth-token")
    if given:
        raise SetupError(f"{', '.join(given)} apply to --transport http only")


async def _serve_mcp(server: MCPServer, args: argparse.Namespace, settings: Settings) -> None:
    if args.transport == "http":
        from corpus_cache.mcp_surface.http_connections import ConnectionLimits
        from corpus_cache.mcp_surface.http_sessions import SessionLimits
        from corpus_cache.mcp_surface.http_transport import serve_http

        host, port = args.host or DEFAULT_HTTP_HOST, args.port or DEFAULT_HTTP_PORT
        connections = ConnectionLimits(
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
            keep_alive=settings.http_keep_alive,
            max_connections=settings.http_max_connections,
            write_timeout=settings.http_write_timeout,
        )
        sessions = SessionLimits(
            total=settings.http_max_sessions,
            per_client=settings.http_sessions_per_client,
            idle_timeout=settings.http_session_idle_minutes * 60,
        )
        await serve_http(
            server, host, port, _auth_token(settings), connections=connections, sessions=sessions
        )
    else:
        if sys.stdin.isatty():
            print(
                "corpus-cache serve: ready, waiting for an MCP client on stdin. This command is "
                "meant to be started by Claude Desktop or Claude Code (`corpus-cache install`, "
                "docs/clients.md); to try it by hand, use `corpus-cache ask` or `corpus-cache "
                "demo`, or `--transport http`. Ctrl-C stops it.",
                file=sys.stderr,
                flush=True,
            )
        await server.run_stdio_async()


def _ask(args: argparse.Namespace) -> int:
    from corpus_cache.engine.runtime import running_engine
    from corpus_cache.mcp_surface.results import ask_result, render_answer

    settings = settings_from_args(args)

    async def run() -> str:
        async with running_engine(settings, keep_emulator=True) as engine:
            result = ask_result(await engine.ask(args.question))
        return result.model_dump_json(indent=2) if args.json else render_answer(result)

    print(anyio.run(run))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from corpus_cache.cli.plan_report import plan_report, render_plan
    from corpus_cache.engine.runtime import running_engine

    settings = settings_from_args(args)

    async def run() -> str:
        async with running_engine(settings) as engine:
            report = plan_report(engine)
        return json.dumps(report, indent=2) if args.json else render_plan(report, args.all)

    print(anyio.run(run))
    return 0


def _ledger_path() -> Path:
    from corpus_cache.config import Settings as _S

    state_dir = _S.model_fields["state_dir"].get_default(call_default_factory=True)
    return Path(os.environ.get("CORPUS_CACHE_STATE_DIR") or state_dir) / "ledger.sqlite3"


def _corpus_key(args: argparse.Namespace) -> str | None:
    return str(args.corpus.expanduser().resolve()) if args.corpus else None


def _stats(args: argparse.Namespace) -> int:
    from corpus_cache.accounting.ledger import Ledger
    from corpus_cache.accounting.stats import collect_stats, render_stats

    ledger_path = _ledger_path()
    if not ledger_path.exists():
        print(f"no ledger yet at {ledger_path}: nothing has been asked", file=sys.stderr)
        return 0
    ledger = Ledger(ledger_path)
    try:
        stats = collect_stats(ledger, _corpus_key(args), time.time())
    finally:
        ledger.close()
    print(json.dumps(stats.as_dict(), indent=2) if args.json else render_stats(stats))
    return 0


def _report(args: argparse.Namespace) -> int:
    from corpus_cache.accounting.ledger import Ledger
    from corpus_cache.accounting.report_html import render_report
    from corpus_cache.accounting.stats import collect_stats

    layout = None
    if args.corpus:
        from corpus_cache.cli.plan_report import plan_report
        from corpus_cache.engine.runtime import running_engine

        settings = settings_from_args(args)

        async def run() -> dict[str, object]:
            async with running_engine(settings) as engine:
                return plan_report(engine)

        layout = anyio.run(run)
    ledger = Ledger(_ledger_path())
    try:
        corpus = _corpus_key(args)
        page = render_report(
            ledger.history(corpus), collect_stats(ledger, corpus, time.time()), layout
        )
    finally:
        ledger.close()
    out: Path = args.html.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out.resolve()}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from corpus_cache.cli.demo import main as demo_main

    corpus = args.corpus.expanduser().resolve()
    if not corpus.is_dir():
        print(f"corpus-cache: demo corpus not found: {corpus}", file=sys.stderr)
        return 2
    return demo_main(corpus, args.question or ())


def _probe(args: argparse.Namespace) -> int:
    from corpus_cache.probe.checks import render_overrides, render_report
    from corpus_cache.probe.runner import ProbeOptions, run_probe

    if args.max_usd <= 0:
        print("--max-usd: expected a positive number of dollars", file=sys.stderr)
        return 2
    options = ProbeOptions(
        model=args.model or DEFAULT_MODEL,
        max_usd=args.max_usd,
        wait=args.wait,
        models_file=args.models_file,
        limits_file=args.limits_file,
    )
    report = anyio.run(run_probe, options, _ledger_path())
    print(json.dumps(report.as_dict(), indent=2) if args.json else render_report(report))
    if args.write_overrides is not None:
        note = (
            f"written by corpus-cache probe on {time.strftime('%Y-%m-%d')} against "
            f"{report.backend}; use it with --models-file or CORPUS_CACHE_MODELS_FILE"
        )
        out: Path = args.write_overrides.expanduser()
        out.write_text(render_overrides(report.model, report.overrides, note), encoding="utf-8")
        print(f"wrote {out.resolve()} ({len(report.overrides)} figures)", file=sys.stderr)
    return 1 if report.failed else 0


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
    emulator.add_argument(
        "--tier",
        help="apply the API's rate limits of this usage tier (1 to 4, or a tier of --limits); "
        "default: no rate limits",
    )
    emulator.add_argument(
        "--limits",
        type=Path,
        metavar="FILE",
        help="a TOML file merged into the rate-limits table (models/limits.toml): figures, "
        "classes, tiers, latency, and the tier in effect (tier = ...)",
    )
    emulator.add_argument(
        "--latency",
        choices=["none", "realistic"],
        default="none",
        help="none: answer at once (default); realistic: time to first token grows with the "
        "uncached prompt, output streams at a steady rate",
    )
    emulator.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="divide realistic latencies by F and refill the rate-limit buckets F times as "
        "fast, for quick runs (default: 1)",
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
        command.add_argument(
            "--budget-tokens",
            type=int,
            help="most corpus tokens per request; a larger corpus is split into shards "
            "(default: the model's window less a reserve, below a price tier if any, or "
            "less by --warm-question-usd and --build-minutes)",
        )
        command.add_argument(
            "--warm-question-usd",
            type=float,
            help="size shards so that a question read from the cache costs about this much; "
            "0: not by price (default: 0.05 once the corpus needs more than one shard of the "
            "window anyway; see docs/caching.md)",
        )
        command.add_argument(
            "--build-minutes",
            type=float,
            help="size shards so that the input-token rate limit, when known, writes one to "
            "the cache in about this many minutes (default: 5; from tier 2 up the window is the "
            "smaller bound)",
        )
        command.add_argument(
            "--fan-out",
            type=int,
            help="shards that answer each question (default: 1, or 2 when the routing is "
            "unsure and the two together are smaller than one shard of the window)",
        )
        command.add_argument(
            "--max-file-bytes",
            type=int,
            help="larger text files, and PDF or DOCX files whose text is larger, are left out "
            "(default: 2097152, or $CORPUS_CACHE_MAX_FILE_BYTES)",
        )
        command.add_argument(
            "--allow-secret-content",
            action="store_true",
            help="send files whose text looks like a private key or an API or cloud "
            "credential; by default they are left out with a warning",
        )
        command.add_argument(
            "--allow-hard-links",
            action="store_true",
            help="send files with several names (hard links) even when not all of their names "
            "are in the corpus; by default they are left out, as another name may be outside it",
        )
        command.add_argument(
            "--prewarm",
            action="store_true",
            help="after a change in the folder, write the cache ahead of the next question",
        )
        command.add_argument(
            "--keep-old-copies",
            action="store_true",
            help="keep edited documents' old copies in the cached prefix even when an edit "
            "removed text, which is then still sent to the API (cheaper; see docs/privacy.md)",
        )
        command.add_argument(
            "--tier",
            help="your account's rate-limit tier (1 to 4, or a tier of --limits-file): the "
            "limits assumed until the API's first response states them; offline, the emulator "
            "applies them too (default: $CORPUS_CACHE_TIER, a --limits-file's own tier, or "
            "learned from the API before the folder is first planned)",
        )
        command.add_argument(
            "--limits-file",
            type=Path,
            metavar="FILE",
            help="a TOML file merged into the rate-limits table (models/limits.toml), as for "
            "`corpus-cache emulator --limits`",
        )
        command.add_argument(
            "--ttl",
            choices=("auto", "5m", "1h"),
            help="cache TTL: auto (default) chooses from the gaps between questions; "
            "5m or 1h fixes it",
        )

    def budget_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--max-usd-per-day",
            type=float,
            help="refuse, sending nothing, a question that would take the last 24 hours' "
            "spend on this corpus over this many dollars (default: no cap, or "
            "$CORPUS_CACHE_MAX_USD_PER_DAY)",
        )

    serve = commands.add_parser(
        "serve",
        help="serve a folder over MCP (stdio, or streamable HTTP)",
        description="Serve a folder of documents over MCP, on stdio for Claude Desktop and "
        "Claude Code, or over streamable HTTP at /mcp. Without ANTHROPIC_API_KEY, answers "
        "come from the offline emulator.",
    )
    corpus_options(serve)
    budget_option(serve)
    serve.add_argument(
        "--transport", choices=("stdio", "http"), default="stdio", help="default: stdio"
    )
    serve.add_argument(
        "--host",
        help=f"address to bind with --transport http (default: {DEFAULT_HTTP_HOST}); any "
        "other than loopback needs --auth-token",
    )
    serve.add_argument(
        "--port", type=int, help=f"port with --transport http (default: {DEFAULT_HTTP_PORT})"
    )
    serve.add_argument(
        "--auth-token",
        help="bearer token every HTTP request must carry (default: $CORPUS_CACHE_AUTH_TOKEN)",
    )
    serve.add_argument(
        "--ask-deadline",
        type=float,
        help="seconds an `ask` may take before it ends with an error; keep it below your "
        "client's timeout (default: 50, or $CORPUS_CACHE_ASK_DEADLINE)",
    )
    serve.add_argument(
        "--no-watch",
        action="store_true",
        help="do not watch the folder: edits are picked up by the refresh tool or a restart",
    )
    serve.add_argument(
        "--poll",
        action="store_true",
        help="watch by polling the folder every second, for network mounts and other "
        "filesystems whose change events do not arrive",
    )
    serve.add_argument(
        "--debounce-ms",
        type=int,
        help="milliseconds a change settles before the folder is rescanned: saves that close "
        "together are one rescan, and what arrives during a rescan is coalesced into one more "
        "(default: 15)",
    )
    serve.set_defaults(run=_serve)

    ask = commands.add_parser("ask", help="ask one question about a folder and print the answer")
    corpus_options(ask)
    budget_option(ask)
    ask.add_argument("question", help="the question")
    ask.add_argument("--json", action="store_true", help="print the structured result")
    ask.set_defaults(run=_ask)

    plan = commands.add_parser(
        "plan",
        help="show how a folder is laid out in cache blocks and what a question costs",
    )
    corpus_options(plan)
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.add_argument("--all", action="store_true", help="list every document of every block")
    plan.set_defaults(run=_plan)

    stats = commands.add_parser(
        "stats",
        help="spent, uncached, saved, hit rate and requests (today, 7 days, all time), and "
        "each shard's tokens, TTL and warm-until, from the ledger",
    )
    stats.add_argument("--corpus", type=Path, help="only this corpus (default: all)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_stats)

    report = commands.add_parser(
        "report",
        help="write a self-contained HTML page of spend, savings, hit rate and tokens",
        description="Write one HTML file (inline CSS and SVG charts, nothing fetched) from the "
        "ledger: cumulative spend against the uncached counterfactual, hit rate over time, "
        "tokens per shard and request kind, cache miss reasons; with --corpus, also the "
        "current layout of that folder.",
    )
    report.add_argument("--html", type=Path, required=True, help="the file to write")
    report.add_argument("--corpus", type=Path, help="only this corpus, and show its current layout")
    report.set_defaults(run=_report)

    demo = commands.add_parser(
        "demo",
        help="serve a folder over stdio, ask questions with an MCP client, show the savings",
    )
    demo.add_argument(
        "--corpus", type=Path, default=Path("corpora/handbook"), help="default: corpora/handbook"
    )
    demo.add_argument(
        "--question",
        action="append",
        help="a question to ask; repeat for more (default: two of the sample handbook's "
        "facts, or, for another folder, two drawn from its largest documents)",
    )
    demo.set_defaults(run=_demo)

    probe = commands.add_parser(
        "probe",
        help="check the model table's caching figures against the API, for cents",
        description="Measure, with a few small requests to whatever the SDK points at (the "
        "API with ANTHROPIC_API_KEY, else an offline emulator), the model's minimum cacheable "
        "length, the lookback, the TTL billing split, the marker upgrade, count_tokens' drift "
        "and the account's rate limits, and compare them with the model table.",
    )
    probe.add_argument("--model", help=f"Claude model id (default: {DEFAULT_MODEL})")
    probe.add_argument(
        "--max-usd",
        type=float,
        default=0.05,
        help="stop before a request could take the probe's spend over this (default: 0.05)",
    )
    probe.add_argument(
        "--wait",
        action="store_true",
        help="also check the TTLs, refresh and the marker upgrade over time: about 14 minutes "
        "of real time (against the emulator, of its virtual clock)",
    )
    probe.add_argument("--json", action="store_true", help="print JSON")
    probe.add_argument(
        "--write-overrides",
        type=Path,
        metavar="FILE",
        help="write a models file of what was measured, for --models-file",
    )
    probe.add_argument(
        "--limits-file",
        type=Path,
        metavar="FILE",
        help="a TOML file merged into the rate-limits table, to name the tier the headers state",
    )
    probe.set_defaults(run=_probe)

    add_install_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    for noisy in ("httpx", "httpx2", "uvicorn", "uvicorn.error", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CorpusCacheError as exc:
        print(f"corpus-cache: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
