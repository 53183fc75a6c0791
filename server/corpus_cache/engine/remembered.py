"""The cache entries an engine believes alive, kept in the state folder across a restart.

A staged build writes a large prefix over minutes (plan/staging.py); a server restarted
half-way should read what is already written rather than write it again. The API says
nothing about which entries it holds, so the engine keeps what its requests taught it
(cache/entries.py) in a small JSON file per corpus, and a new engine on the same state
folder starts from it. The beliefs hold only for the backend that made them: the file
names it (kind, address, emulator process), and is ignored for any other. A belief that
is wrong costs a write, as it does within one run: the API reads less than expected and
the engine forgets it.

Not in the ledger: the ledger records what was billed; this is a cache of beliefs,
rewritten on every request and thrown away freely.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from corpus_cache.models.pricing import Ttl

log = logging.getLogger(__name__)

Beliefs = Mapping[str, tuple[float, Ttl]]  # identity -> (expiry, TTL)


class RememberedEntries:
    def __init__(self, state_dir: Path, corpus: str, backend: str) -> None:
        digest = hashlib.sha256(corpus.encode()).hexdigest()[:16]
        self.path = state_dir / f"cache-entries-{digest}.json"
        self.backend = backend

    def load(self, now: float) -> dict[str, tuple[float, Ttl]]:
        """The entries an earlier run believed alive and still are by their expiry; none
        if it talked to another backend, or the file is missing or unreadable."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): starting without the cache entries it held",
                        self.path, exc)  # fmt: skip
            return {}
        if not isinstance(raw, dict) or raw.get("backend") != self.backend:
            return {}
        entries = raw.get("entries")
        if not isinstance(entries, dict):
            return {}
        out: dict[str, tuple[float, Ttl]] = {}
        for identity, value in entries.items():
            if (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], int | float)
                and value[1] in ("5m", "1h")
                and value[0] > now
            ):
                out[str(identity)] = (float(value[0]), cast(Ttl, value[1]))
        return out

    def save(self, entries: Beliefs) -> None:
        """Replace the file with `entries`, atomically; a failure is logged, never raised:
        it costs at most a write after a restart."""
        body = {"backend": self.backend, "entries": {k: list(v) for k, v in entries.items()}}
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(body), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("cannot keep the cache entries in %s: %s", self.path, exc)
