"""Streamable HTTP at /mcp: Host/Origin checks against DNS rebinding on loopback, a
bearer token that every request must carry when one is set, and bounds on what clients can
hold (connections: http_connections.py; sessions: http_sessions.py).

The corpus and the API key behind `ask` are worth protecting: a browser page can reach a
loopback server through DNS rebinding (hence the Host/Origin checks), and anything bound
beyond loopback can be reached by the network (hence the token, required there).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import TYPE_CHECKING

from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from corpus_cache.errors import SetupError
from corpus_cache.mcp_surface.http_connections import ConnectionLimits, guarded_protocol
from corpus_cache.mcp_surface.http_sessions import BoundedSessionManager, SessionLimits

if TYPE_CHECKING:
    from mcp.server import MCPServer

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
TOKEN_HINT = (
    "pass --auth-token TOKEN or set CORPUS_CACHE_AUTH_TOKEN (make one with "
    "`python3 -c 'import secrets; print(secrets.token_hex(32))'`); clients then send "
    "`Authorization: Bearer TOKEN`"
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse what would expose the corpus: a non-loopback bind without a token, or a
    token short enough to guess."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise SetupError(
            f"the auth token is {len(token)} characters; use at least {MIN_TOKEN_CHARS}: "
            + TOKEN_HINT
        )
    if token is None and not is_loopback(host):
        raise SetupError(
            f"refusing to serve on {host} without a bearer token: anyone who can reach it "
            "could read the corpus and spend your API key. Bind 127.0.0.1 (the default), or "
            + TOKEN_HINT
        )


def transport_security(host: str) -> TransportSecuritySettings:
    """Host and Origin checks against DNS rebinding for a loopback bind. Beyond loopback the
    names clients use are not known here, and the required token does that job instead."""
    if not is_loopback(host):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    bound = f"[{host.strip('[]')}]" if ":" in host else host
    names = list(dict.fromkeys((*LOOPBACK_NAMES, bound)))
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*names, *(f"{name}:*" for name in names)],
        allowed_origins=[
            *(f"http://{name}" for name in names),
            *(f"http://{name}:*" for name in names),
        ],
    )


class BearerTokenMiddleware:
    """Answers 401 to every HTTP request that does not carry `Authorization: Bearer <token>`,
    before the MCP app sees it."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or self._authorized(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a WebSocket: refused before it is accepted
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse(
            {
                "error": "unauthorized",
                "message": "this corpus-cache server needs `Authorization: Bearer <token>`, "
                "with the token it was started with",
            },
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="corpus-cache"'},
        )
        await response(scope, receive, send)

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant time, so the token cannot be guessed byte by byte from response timings.
        return hmac.compare_digest(given.strip().encode(), self._token)


def http_app(
    server: MCPServer, host: str, token: str | None, sessions: SessionLimits | None = None
) -> ASGIApp:
    """The ASGI app: what `server.streamable_http_app()` builds (MCPServer 2.3 adds no auth or
    routes of ours to it), with a session manager that bounds sessions."""
    check_bind(host, token)
    manager = BoundedSessionManager(
        # MCPServer has no public way to reach its low-level server, which the manager runs.
        server._lowlevel_server,
        sessions or SessionLimits(),
        transport_security(host),
    )
    app: ASGIApp = Starlette(
        routes=[Route(MCP_PATH, endpoint=manager)], lifespan=lambda _: manager.run()
    )
    return BearerTokenMiddleware(app, token) if token is not None else app


async def serve_http(
    server: MCPServer,
    host: str,
    port: int,
    token: str | None,
    *,
    connections: ConnectionLimits | None = None,
    sessions: SessionLimits | None = None,
) -> None:
    """Serve until interrupted. Logs go to stderr, like every log of the product."""
    import uvicorn

    app = http_app(server, host, token, sessions)
    limits = connections or ConnectionLimits()
    protocol = guarded_protocol(limits)
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "serving MCP over streamable HTTP at http://%s:%d%s (%s; at most %d connections)",
        shown, port, MCP_PATH,
        "bearer token required" if token else "loopback only, no token", protocol.guard.cap,
    )  # fmt: skip
    config = uvicorn.Config(
        app,
        host=host.strip("[]"),
        port=port,
        log_level="warning",
        http=protocol,
        timeout_keep_alive=limits.keep_alive,
    )
    await uvicorn.Server(config).serve()
