"""Who may talk to an emulator: Host and Origin checks on every path, and the API key of
an in-process emulator.

The emulator holds the text of every document sent to it (its request log) and answers the
product's questions, so a web page must not reach it. A page can reach a loopback port
through DNS rebinding (its requests then carry the attacker's name in Host) or by sending
a request no preflight guards (a `text/plain` POST, an image's GET): browsers mark those
with Origin or Sec-Fetch-Site, which the SDK never sends. The emulator that `serve`, `ask`
and `demo` start in-process also wants a key only that process knows.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError


def allowed_hosts(bound_host: str, port: int) -> frozenset[str] | None:
    """The Host values a request may carry: the loopback address the emulator listens on,
    with its port (`localhost` too). None for a bind beyond loopback (`--allow-remote`),
    whose names are not known here."""
    try:
        address = ipaddress.ip_address(bound_host.strip("[]"))
    except ValueError:
        return None
    if not address.is_loopback:
        return None
    shown = f"[{address}]" if address.version == 6 else str(address)
    return frozenset({f"{shown}:{port}", f"localhost:{port}"})


def presented_key(headers: Headers) -> str:
    """The key a request carries, as the SDK sends it (`x-api-key`) or as a bearer token."""
    key = headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def refusal(headers: Headers, hosts: frozenset[str] | None, api_key: str | None) -> ApiError | None:
    """Why a request is refused, or None to let it through."""
    if hosts is not None and headers.get("host", "").lower() not in hosts:
        return ApiError(
            421, "invalid_request_error", "this emulator answers only to its own loopback address"
        )
    site = headers.get("sec-fetch-site")
    if "origin" in headers or (site is not None and site != "none"):
        return ApiError(403, "permission_error", "requests from web pages are refused")
    if api_key is not None and not hmac.compare_digest(
        presented_key(headers).encode(), api_key.encode()
    ):
        return ApiError(401, "authentication_error", "invalid x-api-key")
    return None


class EmulatorGuard:
    """ASGI middleware answering every refused request with the API's error shape."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None, api_key: str | None) -> None:
        self.app = app
        self.hosts = hosts
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        error = refusal(Headers(scope=scope), self.hosts, self.api_key)
        if error is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a WebSocket: refused before it is accepted
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = {"x-corpus-cache-emulator": "1", **error.headers}
        response = JSONResponse(error.body(), status_code=error.status, headers=headers)
        await response(scope, receive, send)
