"""MCP change notifications, in both protocol eras, after every swap of the live corpus.

When documents appear or disappear, clients hear that the resource list changed; every
added, removed or edited document's `corpus://doc/...` resource, and `corpus://index` and
`corpus://stats`, are announced as updated.

- 2026-07-28 (no handshake): events are published on the server's `SubscriptionBus` and
  reach each client's `subscriptions/listen` stream, filtered to what it asked for.
- Up to 2025-11-25 (initialize handshake): MCPServer 2.3 neither serves
  `resources/subscribe` nor advertises change notifications. `LegacySubscriptions` is the
  workaround, on the low-level server, and the only place that knows about it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mcp.server import MCPServer
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, SubscriptionBus
from mcp.types import (
    EmptyResult,
    NotificationParams,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)

from corpus_cache.corpus.changes import snapshot_changes
from corpus_cache.mcp_surface.startup import EngineSlot

if TYPE_CHECKING:  # loaded after the server answers: see startup.py
    from corpus_cache.cache.live_corpus import Corpus

log = logging.getLogger(__name__)

INDEX_URI = "corpus://index"
STATS_URI = "corpus://stats"
DOCUMENT_URI_PREFIX = "corpus://doc/"


def document_uri(path: str) -> str:
    """The URI of a document's resource. Only the characters that would end or break the
    path part of a URI are escaped, and `corpus://doc/{+path}` decodes them again."""
    escaped = path.replace("%", "%25").replace("#", "%23").replace("?", "%3F")
    return DOCUMENT_URI_PREFIX + escaped


class LegacySubscriptions:
    """`resources/subscribe` and `resources/unsubscribe` for handshake-era clients.

    Each connection is tracked from `notifications/initialized` (every such client hears
    that the list changed) and forgotten when it closes; a subscription adds a URI to its
    connection. Notifications go out on the connection's own channel, which, unlike a
    request's, outlives the request that subscribed."""

    def __init__(self) -> None:
        self._subscribed: dict[Connection, set[str]] = {}

    def install(self, server: MCPServer) -> None:
        # MCPServer has no public way to add protocol handlers; its low-level server does.
        lowlevel = server._lowlevel_server
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler(
            "resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe
        )
        lowlevel.add_notification_handler(
            "notifications/initialized", NotificationParams, self._initialized
        )
        # With the subscribe handler registered, the handshake advertises `subscribe`;
        # `listChanged` comes only from initialization options that MCPServer builds
        # itself, so the initialize result is amended on its way out instead.
        server.middleware.append(_advertise_list_changed)

    @property
    def connections(self) -> int:
        return len(self._subscribed)

    async def resource_updated(self, uris: list[str]) -> None:
        for connection, subscribed in list(self._subscribed.items()):
            for uri in uris:
                if uri in subscribed:
                    await connection.send_resource_updated(uri)

    async def list_changed(self) -> None:
        for connection in list(self._subscribed):
            await connection.send_resource_list_changed()

    async def _initialized(
        self, ctx: ServerRequestContext[Any], params: NotificationParams
    ) -> None:
        self._track(ctx.session)

    async def _subscribe(
        self, ctx: ServerRequestContext[Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        self._track(ctx.session).add(params.uri)
        return EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        self._track(ctx.session).discard(params.uri)
        return EmptyResult()

    def _track(self, session: ServerSession) -> set[str]:
        # A ServerSession lives for one request; its Connection is the client. The SDK
        # keeps it private on the session, but its `exit_stack` is the documented place
        # for per-connection teardown.
        connection: Connection = session._connection
        if connection not in self._subscribed:
            self._subscribed[connection] = set()
            connection.exit_stack.callback(self._subscribed.pop, connection, None)
        return self._subscribed[connection]


async def _advertise_list_changed(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    result = await call_next(ctx)
    if ctx.method == "initialize" and isinstance(result, dict):
        capabilities = result.get("capabilities")
        resources = capabilities.get("resources") if isinstance(capabilities, dict) else None
        if isinstance(resources, dict):
            resources["listChanged"] = True
    return result


class ChangeNotifier:
    """Announces what a corpus swap changed to every connected client, in either era."""

    def __init__(self, bus: SubscriptionBus, legacy: LegacySubscriptions) -> None:
        self.bus = bus
        self.legacy = legacy

    async def corpus_swapped(self, old: Corpus | None, new: Corpus) -> None:
        if old is None:  # the first index ended: clients connected during it listed nothing
            await self.bus.publish(ResourceUpdated(uri=INDEX_URI))
            await self.bus.publish(ResourceUpdated(uri=STATS_URI))
            await self.bus.publish(ResourcesListChanged())
            await self.legacy.resource_updated([INDEX_URI, STATS_URI])
            await self.legacy.list_changed()
            return
        changes = snapshot_changes(old.snapshot, new.snapshot)
        if not changes.any:
            return
        paths = changes.added + changes.removed + changes.changed
        uris = [document_uri(path) for path in paths] + [INDEX_URI, STATS_URI]
        for uri in uris:
            await self.bus.publish(ResourceUpdated(uri=uri))
        await self.legacy.resource_updated(uris)
        if changes.list_changed:
            await self.bus.publish(ResourcesListChanged())
            await self.legacy.list_changed()
        log.info(
            "corpus v%d: %d added, %d removed, %d changed; clients notified",
            new.snapshot.version, len(changes.added), len(changes.removed), len(changes.changed),
        )  # fmt: skip


def notify_changes(server: MCPServer, slot: EngineSlot, bus: SubscriptionBus) -> ChangeNotifier:
    """Announce every corpus swap of the engine in `slot` (attached before its first index)
    to the clients of `server`, which must have been built with `subscriptions=bus`."""
    legacy = LegacySubscriptions()
    legacy.install(server)
    notifier = ChangeNotifier(bus, legacy)
    slot.on_attach(lambda engine: engine.on_swap(notifier.corpus_swapped))
    return notifier
