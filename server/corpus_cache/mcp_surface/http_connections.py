"""Connections to the HTTP transport: read deadlines and a cap on how many are open.

uvicorn closes a connection that stays idle after a response, but nothing bounds how long a
client may take to send a request: one that sends its headers a byte at a time, or never
finishes its body, is held forever, and a few hundred of them use up the process's file
descriptors, after which nobody gets in. Here every connection is in one of three phases:

- waiting for a request's headers (a new connection, or one between requests): it must
  send them within `header_timeout` of the phase's start, however it trickles them;
- sending a request's body: within `body_timeout` of the headers;
- being answered (the request is in, the response is not finished): no deadline, as an
  answer or a server-sent event stream may take long; but a client that stops reading what
  it is sent (the response waits for it for `write_timeout`) is dropped.

A connection past its deadline is dropped. When more than `max_connections` are open, the
one that has been waiting longest is dropped to make room; when none is waiting (all are
being answered), the new connection gets a 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# Descriptors kept for what the server itself opens: the ledger, the watcher, the corpus
# files being read, the API client's connections.
FD_RESERVE = 64
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 47\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    b"corpus-cache: too many connections; try again\n"
)
WARN_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: int = 5
    max_connections: int = 256
    write_timeout: float = 30.0


def connection_cap(wanted: int, soft_fd_limit: int) -> int:
    """How many connections may be open: what was asked, fewer if the file limit is low."""
    return max(1, min(wanted, soft_fd_limit - FD_RESERVE))


def soft_fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Phase(Enum):
    WAITING = "waiting for a request"
    BODY = "sending a request body"
    ANSWERING = "being answered"


def phase_of(theirs: object, ours: object) -> Phase:
    """A connection's phase from h11's view of the client's side and of ours."""
    if theirs is h11.SEND_BODY:
        return Phase.BODY
    if ours is h11.SEND_RESPONSE or ours is h11.SEND_BODY:
        return Phase.ANSWERING
    return Phase.WAITING


class ConnectionGuard:
    """The open connections of one server, and which of them are waiting, oldest first."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.cap = connection_cap(limits.max_connections, soft_fd_limit())
        self.open: set[GuardedH11Protocol] = set()
        # Insertion order is the order in which they began to wait.
        self.waiting: dict[GuardedH11Protocol, None] = {}
        self._warned = 0.0

    def admit(self, connection: GuardedH11Protocol) -> bool:
        """Count a new connection in, making room by dropping the connection that has waited
        longest; False when every other connection is being answered."""
        if len(self.open) >= self.cap:
            if not self.waiting:
                self._warn("refusing new connections with 503")
                return False
            oldest = next(iter(self.waiting))
            self._warn("closing the connections that have waited longest")
            oldest.drop()
        self.open.add(connection)
        return True

    def entered(self, connection: GuardedH11Protocol, phase: Phase) -> None:
        self.waiting.pop(connection, None)
        if phase is not Phase.ANSWERING:
            self.waiting[connection] = None

    def forget(self, connection: GuardedH11Protocol) -> None:
        self.open.discard(connection)
        self.waiting.pop(connection, None)

    def _warn(self, doing: str) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_SECONDS:
            self._warned = now
            log.warning(
                "%d HTTP connections are open (the limit): %s (CORPUS_CACHE_HTTP_MAX_CONNECTIONS)",
                len(self.open), doing,
            )  # fmt: skip


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline on each phase but the answer's."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._stalled: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            self._refused = True
            transport.write(REFUSED)
            transport.close()
            return
        self._follow()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_timers()
        self.guard.forget(self)

    def pause_writing(self) -> None:
        """The transport holds more than it can send: the client is not reading."""
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(
                self.guard.limits.write_timeout, self._expired_writing
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def drop(self) -> None:
        """Close at once, without waiting for anything still to be written."""
        self._cancel_timers()
        self.guard.forget(self)
        self.transport.abort()

    def _follow(self) -> None:
        """Start the deadline of the phase the connection is now in, if it changed."""
        if self.transport.is_closing():
            return
        phase = phase_of(self.conn.their_state, self.conn.our_state)
        if phase is self._phase:
            return  # the deadline runs from the phase's start, not from the last byte
        self._phase = phase
        self.guard.entered(self, phase)
        self._cancel_deadline()
        limits = self.guard.limits
        seconds = {Phase.WAITING: limits.header_timeout, Phase.BODY: limits.body_timeout}
        if phase in seconds:
            self._deadline = self.loop.call_later(seconds[phase], self._expired, phase)

    def _expired(self, phase: Phase) -> None:
        self._deadline = None
        if self._phase is phase:
            log.debug("closing an HTTP connection %s for too long", phase.value)
            self.drop()

    def _expired_writing(self) -> None:
        self._stalled = None
        log.debug("closing an HTTP connection whose client stopped reading")
        self.drop()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _cancel_timers(self) -> None:
        self._cancel_deadline()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class for uvicorn's `http=`, sharing one guard across its connections."""
    return type("Guarded", (GuardedH11Protocol,), {"guard": ConnectionGuard(limits)})
