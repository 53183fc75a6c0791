"""Which prompt-cache entries the engine believes alive, and with what TTL.

An entry is known by the identity of the prefix an anchor ends (markers.anchor_ids), so
two snapshots that share their first documents share those entries. What is known comes
from the requests the engine sends: what each marked, and whether the API read anything.
The API says nothing about expiry; the times here are what the TTLs imply."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from corpus_cache.api.prepared import PreparedRequest
from corpus_cache.models.pricing import TTL_SECONDS, Ttl, Usage

# Past this many entries remembered, the expired ones are forgotten.
MAX_REMEMBERED = 10_000


class CacheEntries:
    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}  # identity -> when we expect it to expire
        self._ttls: dict[str, Ttl] = {}  # identity -> the TTL it was written with
        # Called after every change, with the entries then alive and the time (engine/
        # remembered.py keeps them across a restart and shares them with other instances).
        self.on_change: Callable[[dict[str, tuple[float, Ttl]], float], None] | None = None
        # Called with every response's request and usage (questions, warming, a build's
        # slices): the engine learns exact token figures from them (api/learned.py).
        self.on_answered: Callable[[PreparedRequest, Usage], None] | None = None

    def alive_now(self, now: float) -> dict[str, tuple[float, Ttl]]:
        """Every entry believed alive at `now`: identity -> (expiry, TTL)."""
        return {
            i: (expiry, self._ttls.get(i, "5m"))
            for i, expiry in self._expiry.items()
            if expiry > now
        }

    def restore(self, entries: Mapping[str, tuple[float, Ttl]]) -> None:
        """Believe `entries` alive until their expiry (identity -> (expiry, TTL)), as an
        earlier run or another instance left them; an expiry of 0 is an entry gone."""
        for identity, (expiry, ttl) in entries.items():
            self._expiry[identity] = expiry
            self._ttls[identity] = ttl

    def forget(self, identities: Iterable[str], now: float) -> None:
        """Believe these entries gone (a request that read them failed in a way that says
        they may not be there)."""
        for identity in identities:
            self._expiry.pop(identity, None)
        self._changed(now)

    def _changed(self, now: float) -> None:
        if self.on_change is not None:
            self.on_change(self.alive_now(now), now)

    def expires(self, identity: str) -> float:
        """When the entry is expected to expire; 0.0 if it is not known to exist."""
        return self._expiry.get(identity, 0.0)

    def alive(self, identity: str, now: float) -> bool:
        return self.expires(identity) > now

    def ttl(self, identity: str) -> Ttl | None:
        """The TTL the entry was written with, if known."""
        return self._ttls.get(identity)

    def live(self, ids: Mapping[int, str], anchors: Iterable[int], now: float) -> dict[int, Ttl]:
        """Of `anchors` (whose entries' identities `ids` gives), those alive, in the order
        given, with the TTL each was written with (5 minutes if not known)."""
        return {a: self._ttls.get(ids[a], "5m") for a in anchors if self.alive(ids[a], now)}

    def answered(self, request: PreparedRequest, usage: Usage) -> None:
        """What `request`'s response (its usage) says of the entries it marked and read."""
        self.remember(
            request.identities, set(request.alive), list(request.marked), usage,
            request.prepared_at, request.ttls,
        )  # fmt: skip
        if self.on_answered is not None:
            self.on_answered(request, usage)

    def remember(
        self,
        ids: Mapping[int, str],
        alive: set[int],
        marked: list[int],
        usage: Usage,
        now: float,
        ttls: Mapping[int, Ttl],
    ) -> None:
        """Track which anchors' entries live, from what a request marked and read: `alive`,
        the anchors it was sent believing alive; `ttls`, the TTL it asked for each."""
        if not ttls:
            return
        if alive and usage.cache_read_tokens == 0:
            for anchor in alive:  # we thought them alive; the API did not: forget them
                self._expiry.pop(ids[anchor], None)
            alive = set()
        read = max(alive) if alive else -1
        for anchor in marked:
            if anchor > read:  # written now, with the TTL this request asked for
                self._ttls[ids[anchor]] = ttls[anchor]
        for anchor in {*marked, read} - {-1}:
            # A hit refreshes an entry with its own TTL: a 1-hour mark does not upgrade it.
            ttl = self._ttls.get(ids[anchor], ttls[anchor])
            if anchor > read or anchor in alive:
                self._expiry[ids[anchor]] = now + TTL_SECONDS[ttl]
        if len(self._expiry) > MAX_REMEMBERED:
            self._expiry = {k: v for k, v in self._expiry.items() if v > now}
            self._ttls = {k: v for k, v in self._ttls.items() if k in self._expiry}
        self._changed(now)
