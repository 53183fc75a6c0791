"""The cache entries an engine believes alive, kept in the state folder: across a restart,
and among the instances that share the folder.

A staged build writes a large prefix over minutes (plan/staging.py); a server restarted
half-way should read what is already written rather than write it again. Two servers on
one folder (two Claude Code windows) ask the same API with the same key: what one writes,
the other can read. The API says nothing about which entries it holds, so each engine
keeps what its requests taught it (cache/entries.py) in the ledger's SQLite file
(accounting/shared.py), and reads what the others learnt before it prepares a request.
The beliefs hold only for the backend that made them (kind, address, emulator process),
and are ignored for any other. A belief that is wrong costs a write, as it does within
one run: the API reads less than expected and the engine forgets it.
"""

from __future__ import annotations

from collections.abc import Mapping

from corpus_cache.accounting.shared import Shared
from corpus_cache.models.pricing import Ttl

Beliefs = Mapping[str, tuple[float, Ttl]]  # identity -> (expiry, TTL)


class RememberedEntries:
    def __init__(self, shared: Shared, corpus: str, backend: str) -> None:
        self.shared = shared
        self.corpus = corpus
        self.backend = backend
        self._published: dict[str, tuple[float, Ttl]] = {}  # as the ledger holds them
        self._read = 0  # the last row read

    def load(self, now: float) -> dict[str, tuple[float, Ttl]]:
        """The entries any instance on this state folder believed alive for this corpus and
        backend, and still are by their expiry; none if the ledger cannot be read."""
        found, self._read = self.shared.entries(self.backend, self.corpus, now)
        entries = {i: (expiry, _ttl(ttl)) for i, (expiry, ttl) in found.items()}
        self._published = dict(entries)
        return entries

    def news(self) -> dict[str, tuple[float, Ttl]]:
        """What other instances learnt since the last look (an expiry of 0: gone)."""
        found, self._read = self.shared.entries_since(self.backend, self.corpus, self._read)
        news = {i: (expiry, _ttl(ttl)) for i, (expiry, ttl) in found.items()}
        self._published.update(news)
        return news

    def save(self, entries: Beliefs, now: float) -> None:
        """Publish what changed since the last save: `entries` are those alive at `now`; one
        published alive and missing now is believed gone (expiry 0)."""
        changed: dict[str, tuple[float, Ttl]] = {
            i: v for i, v in entries.items() if self._published.get(i) != v
        }
        for identity, (expiry, ttl) in self._published.items():
            if identity not in entries and expiry > now:
                changed[identity] = (0.0, ttl)
        if not changed:
            return
        self.shared.publish_entries(self.backend, self.corpus, changed)
        self._published.update(changed)


def _ttl(text: str) -> Ttl:
    return "1h" if text == "1h" else "5m"
