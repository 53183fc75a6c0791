"""Run the emulator: in the foreground (the CLI) or in a background thread (in-process)."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import uvicorn

from corpus_cache.models.catalog import Catalog, load_catalog
from corpus_cache.models.limits import load_limits

from .app import build_app
from .guard import EmulatorGuard, allowed_hosts
from .latency import Latency
from .service import EmulatorService

LatencyMode = Literal["none", "realistic"]


def make_service(
    catalog: Catalog,
    *,
    tier: str | int | None = None,
    limits_file: Path | None = None,
    latency: LatencyMode = "none",
    time_scale: float = 1.0,
) -> EmulatorService:
    """An emulator at a tier of the limits table (the shipped one with `limits_file`
    merged in; a `tier` in that file applies unless one is given here) and with or
    without realistic latency, divided by `time_scale`; the buckets refill `time_scale`
    times as fast, so that a time-scaled run keeps latency and limits in step."""
    table = load_limits(limits_file)
    if tier is None:
        tier = table.tier
    if tier is not None:
        table.get_tier(tier)  # an unknown tier is the user's error, said plainly
    timing = Latency.realistic(table.latency, time_scale) if latency == "realistic" else None
    return EmulatorService(
        catalog, limits_table=table, tier=tier, latency=timing, time_scale=time_scale
    )


def _config(
    catalog: Catalog,
    service: EmulatorService,
    sock: socket.socket,
    *,
    api_key: str | None,
    controls: bool,
) -> uvicorn.Config:
    bound_host, bound_port = sock.getsockname()[:2]
    app = EmulatorGuard(
        build_app(catalog, service, controls=controls),
        hosts=allowed_hosts(bound_host, bound_port),
        api_key=api_key,
    )
    # log_config=None and no access log: uvicorn's defaults write to stdout, which is the
    # MCP protocol stream when the emulator runs inside `corpus-cache serve`.
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it a response's body waits behind its
    # headers for the client's delayed ACK: 40 ms on every request of a kept-alive
    # connection, which is most of them.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass
class RunningEmulator:
    """An emulator serving on loopback from a daemon thread."""

    base_url: str
    service: EmulatorService
    _server: uvicorn.Server
    _thread: threading.Thread
    _socket: socket.socket

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    catalog: Catalog | None = None,
    *,
    api_key: str | None = None,
    controls: bool = True,
    tier: str | int | None = None,
    limits_file: Path | None = None,
    latency: LatencyMode = "none",
    time_scale: float = 1.0,
) -> RunningEmulator:
    """Start on a free port (port=0) and return once it accepts connections.

    With `api_key`, every request must carry it (any key is accepted otherwise); without
    `controls`, the /_emulator/ routes are absent. `tier`, `limits_file`, `latency` and
    `time_scale` are as for `make_service`: by default no rate limits and no latency.
    """
    catalog = catalog or load_catalog()
    service = make_service(
        catalog, tier=tier, limits_file=limits_file, latency=latency, time_scale=time_scale
    )
    sock = _bind(host, port)
    server = uvicorn.Server(_config(catalog, service, sock, api_key=api_key, controls=controls))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="corpus-cache-emulator", daemon=True
    )
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the emulator failed to start; see the log above")
        threading.Event().wait(0.01)
    bound_host, bound_port = sock.getsockname()[:2]
    display = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningEmulator(f"http://{display}:{bound_port}", service, server, thread, sock)


def serve_forever(host: str, port: int, catalog: Catalog, service: EmulatorService) -> None:
    """The user's own emulator (`corpus-cache emulator`): any key, the controls on."""
    sock = _bind(host, port)
    server = uvicorn.Server(_config(catalog, service, sock, api_key=None, controls=True))
    server.run(sockets=[sock])
