"""MCP sessions over streamable HTTP, bounded per client and in all, least recently used
ended first.

The SDK's session manager keeps at most `max_sessions` (10,000) and then answers every new
client 503 until one expires, 30 idle minutes later: one client that opens sessions and
drops them shuts everybody else out, and 10,000 sessions hold hundreds of megabytes. Here
a new session is always admitted: to make room, the least recently used session of the
same client (by remote address: behind one token, clients are told apart by address) ends
once that client holds `per_client`, and the least recently used of all once `total` are
open. Sessions with no request for `idle_timeout` seconds end as the SDK ends them.

The hook is the SDK manager's admission of a new session (`_admit_session`, under its
creation lock, so counts are exact) and its discarding of an ended one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True)
class SessionLimits:
    total: int = 1000
    per_client: int = 64
    idle_timeout: float = 15 * 60.0


def sessions_to_end(
    by_recency: Sequence[tuple[str, str]], client: str, limits: SessionLimits
) -> list[str]:
    """The sessions to end before `client` opens one more, given the open sessions as
    (session id, client), least recently used first."""
    mine = [session for session, owner in by_recency if owner == client]
    ending = mine[: max(0, len(mine) - limits.per_client + 1)]
    over = len(by_recency) - len(ending) - limits.total + 1
    if over > 0:
        chosen = set(ending)
        ending += [s for s, _ in by_recency if s not in chosen][:over]
    return ending


_client: ContextVar[str] = ContextVar("corpus_cache_http_client", default="")


def client_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


class BoundedSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, making room for each new session instead of refusing."""

    def __init__(
        self,
        app: Server[Any],
        limits: SessionLimits,
        security_settings: TransportSecuritySettings | None,
    ) -> None:
        super().__init__(
            app,
            security_settings=security_settings,
            session_idle_timeout=limits.idle_timeout,
            max_sessions=None,  # never refuse: room is made in `_admit_session`
        )
        self.limits = limits
        # session id -> (client, transport), least recently used first
        self._recency: OrderedDict[str, tuple[str, StreamableHTTPServerTransport]] = OrderedDict()

    @property
    def open_sessions(self) -> int:
        return len(self._recency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI endpoint at /mcp: note who asks and which session it uses, then serve."""
        session = Headers(scope=scope).get(MCP_SESSION_ID_HEADER)
        if session is not None and session in self._recency:
            self._recency.move_to_end(session)
        token = _client.set(client_of(scope))
        try:
            await self.handle_request(scope, receive, send)
        finally:
            _client.reset(token)

    def _admit_session(
        self, requestor: AuthorizationContext | None
    ) -> StreamableHTTPServerTransport | None:
        client = _client.get()
        order = [(session, owner) for session, (owner, _) in self._recency.items()]
        for session in sessions_to_end(order, client, self.limits):
            _, ended = self._recency.pop(session)
            assert self._task_group is not None  # admission happens only while running
            self._task_group.start_soon(self._discard_session, session, ended)
        admitted = super()._admit_session(requestor)
        if admitted is not None and admitted.mcp_session_id is not None:
            self._recency[admitted.mcp_session_id] = (client, admitted)
        return admitted

    async def _discard_session(
        self, session_id: str, transport: StreamableHTTPServerTransport
    ) -> None:
        self._recency.pop(session_id, None)
        await super()._discard_session(session_id, transport)
