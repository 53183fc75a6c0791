"""One keeper among the instances that share a state folder: a lease in the ledger's SQLite.

Several servers may serve one corpus from one state folder (two Claude Code windows on one
project). Each registers itself in `instances` and beats a heartbeat; one of them holds the
corpus's row in `keepers`, the lease that makes it the keeper (storage.M010_KEEPERS). The
keeper renews the lease at every beat; a keeper that exits cleanly deletes it; one that is
killed or stalls stops renewing, and another instance takes the lease once it has seen it
expired at two of its beats in a row (so that a clock that jumps, as a test's virtual clock
does, does not hand the lease over while the keeper is alive and about to renew). Every
beat is one BEGIN IMMEDIATE transaction: two instances never both take the lease.

The rules (`next_lease`, `expired`) are pure; `LeaseStore` is the SQLite edge.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

from corpus_cache.accounting.storage import migrate, transaction

BEAT_SECONDS = 1.0  # how often every instance beats (and the keeper renews)
# How long a lease lasts after its last renewal. A killed keeper's lease is taken at the
# second beat that sees it expired: within LEASE_SECONDS + 2 * BEAT_SECONDS = 4.5 s.
LEASE_SECONDS = 2.5
# An instance that has not beaten within this long before another's previous beat is not
# counted as live (`live_after`); after FORGET_SECONDS its row is removed (a clean exit
# removes it at once).
INSTANCE_SECONDS = 2.5
FORGET_SECONDS = 3600.0


@dataclass(frozen=True)
class Instance:
    """One server process: a random id (a pid may be reused), its pid, when it started."""

    id: str
    pid: int
    started: float


@dataclass(frozen=True)
class Lease:
    """Who keeps a corpus's cache: the holder's id and pid, since when, until when."""

    holder: str
    pid: int
    since: float
    expires: float


@dataclass(frozen=True)
class Standing:
    """What one beat found: the lease after it, whether this instance holds it, how many
    instances serve the corpus (this one included), and the lease this instance saw expired
    and did not take (it takes it at its next beat, if that finds it unchanged)."""

    lease: Lease | None
    keeper: bool
    instances: int
    seen_expired: Lease | None = None


def expired(lease: Lease, now: float) -> bool:
    return now >= lease.expires


def next_lease(
    current: Lease | None,
    me: Instance,
    now: float,
    seen_expired: Lease | None,
    seconds: float = LEASE_SECONDS,
) -> Lease | None:
    """The lease after `me` beats at `now`: taken if there is none; renewed (keeping its
    `since`) if `me` holds it, expired or not, since no one else took it; taken if it is
    expired and is the very lease `me` saw expired at its previous beat; else unchanged."""
    if current is not None and current.holder == me.id:
        return replace(current, expires=now + seconds)
    if current is None or (expired(current, now) and current == seen_expired):
        return Lease(me.id, me.pid, now, now + seconds)
    return current


def live_after(previous_beat: float | None, now: float) -> float:
    """The oldest heartbeat of an instance counted as live by a beat at `now`: one within
    INSTANCE_SECONDS of this instance's previous beat (of now, at its first). Counted from
    the previous beat, not from now: after a clock jump the others have not beaten yet."""
    return min(now, previous_beat if previous_beat is not None else now) - INSTANCE_SECONDS


def still_expired(current: Lease | None, me: Instance, now: float) -> Lease | None:
    """The lease to remember as seen expired after a beat that did not take it."""
    if current is not None and current.holder != me.id and expired(current, now):
        return current
    return None


class LeaseStore:
    """The `instances` and `keepers` tables of the ledger's file, for one instance serving
    one corpus. Its own connection: a beat never waits for the ledger's lock of this process.
    Raises sqlite3.Error when the file cannot be written (the caller treats the beat as
    failed: not keeper until one succeeds)."""

    def __init__(self, path: Path, corpus: str, me: Instance, busy_timeout: float = 1.0) -> None:
        self.path, self.corpus, self.me = path, corpus, me
        self.busy_timeout = busy_timeout
        self._previous: float | None = None  # when this instance last beat
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            migrate(self._db)
        except BaseException:
            self._db.close()
            raise

    def beat(self, now: float, seen_expired: Lease | None) -> Standing:
        """Register this instance's heartbeat, renew or take the lease as `next_lease`
        says, and count the live instances: one transaction."""
        db, me, corpus = self._db, self.me, self.corpus
        with transaction(db):
            db.execute(
                "INSERT INTO instances (id, corpus, pid, started, heartbeat) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET heartbeat = ?",
                (me.id, corpus, me.pid, me.started, now, now),
            )
            db.execute(
                "DELETE FROM instances WHERE corpus = ? AND heartbeat < ?",
                (corpus, now - FORGET_SECONDS),
            )
            row = db.execute(
                "SELECT holder, pid, since, expires FROM keepers WHERE corpus = ?", (corpus,)
            ).fetchone()
            current = Lease(*row) if row is not None else None
            lease = next_lease(current, me, now, seen_expired)
            if lease != current and lease is not None:
                db.execute(
                    "INSERT OR REPLACE INTO keepers (corpus, holder, pid, since, expires) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (corpus, lease.holder, lease.pid, lease.since, lease.expires),
                )
            (live,) = db.execute(
                "SELECT COUNT(*) FROM instances WHERE corpus = ? AND (heartbeat >= ? OR id = ?)",
                (corpus, live_after(self._previous, now), me.id),
            ).fetchone()
        self._previous = now
        keeper = lease is not None and lease.holder == me.id
        return Standing(lease, keeper, int(live), still_expired(lease, me, now))

    def release(self) -> None:
        """Give the lease up, if held, and unregister: another instance takes it at its
        next beat."""
        with transaction(self._db):
            self._db.execute(
                "DELETE FROM keepers WHERE corpus = ? AND holder = ?", (self.corpus, self.me.id)
            )
            self._db.execute("DELETE FROM instances WHERE id = ?", (self.me.id,))

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
