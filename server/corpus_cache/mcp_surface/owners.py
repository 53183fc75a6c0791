"""Who asks: the owner of an `ask` session (sessions.py), from the MCP request's context.

- A connection that lasts (stdio, an in-process client, or HTTP in the handshake era):
  the connection itself, by a random id kept in its per-connection state.
- HTTP with an MCP session id (the handshake era): that session, which the transport
  issued to one client and checks on every request.
- HTTP in the 2026 era, where requests carry no connection: the bearer token, if any,
  else every tokenless client alike. Either may stand for several clients (`SHARED`),
  so session ids there are generated only and act as capabilities.
- A 2026-era request without HTTP (stdio or in process): likewise shared.

Headers are client input: the token is trusted only because the HTTP middleware has
checked it before the request gets here, and the MCP session id because the transport
refuses one it did not issue.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from mcp.server.mcpserver import Context
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from corpus_cache.engine.sessions import SHARED

_STATE_KEY = "corpus_cache.session_owner"


def session_owner(ctx: Context[Any, Any]) -> str:
    request = ctx.request_context
    headers = ctx.headers
    if headers is not None:
        session_id = headers.get("mcp-session-id")
        if session_id:
            return "mcp-session:" + _digest(session_id)
    modern = request.protocol_version in MODERN_PROTOCOL_VERSIONS
    # The SDK keeps the connection on the session privately; a handshake-era connection
    # is one object for its whole life, which is what scopes its sessions.
    connection = getattr(request.session, "_connection", None)
    state = getattr(connection, "state", None)
    if not modern and isinstance(state, dict):
        owner = state.get(_STATE_KEY)
        if not isinstance(owner, str):
            owner = state[_STATE_KEY] = "connection:" + secrets.token_hex(16)
        return owner
    if headers is not None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return SHARED + "token:" + _digest(token.strip())
        return SHARED + "http"
    return SHARED + "process"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]
