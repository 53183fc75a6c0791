"""What instances sharing one state folder tell each other, through the ledger's SQLite
file (two Claude Code windows on one project run two servers on one folder).

- the cache entries believed alive, and until when: another instance's write or read
  makes an entry alive for this one too (`publish_entries`, `entries_since`);
- when questions were asked, for the TTL policy's gaps (`asked`, `questions_since`);
- the daily cap's requests under way, reserved in the same transaction that reads the
  spend, so that two instances cannot both pass a cap only one fits (`reserve`);
- the rate-limit buckets as last known (`publish_limits`, `limits_since`);
- who is writing a cold prefix, so that a second instance waits and reads it
  (`claim`, `release_claims`, `held_by_others`).

A row of a process that is gone (its pid), or past its `expires`, holds nothing: a killed
instance blocks no one. Everything here is best effort: when the ledger cannot be read or
written, each instance goes on with what it knows itself, as before there were several.
The tables: storage.M009_SHARED_STATE.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from corpus_cache.accounting.ledger import Ledger, StorageFault
from corpus_cache.accounting.storage import in_batches
from corpus_cache.errors import LedgerUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Entries and question times older than this are dropped when an instance starts.
FORGET_AFTER_SECONDS = 7 * 86_400.0
TTLS = ("5m", "1h")


def decoded(rows: Iterable[Any], decode: Callable[[Any], T]) -> list[T]:
    """Each row as `decode` reads it. A row this version cannot read (another version's, a
    corrupt or hostile write) is skipped with a warning: one bad row must not stop every
    instance's questions until its writer publishes again."""
    out: list[T] = []
    for row in rows:
        try:
            out.append(decode(row))
        except (ValueError, TypeError, OverflowError, KeyError, IndexError, AttributeError):
            log.warning("skipped a row another instance shared that cannot be read: %.200r", row)
    return out


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _entry(identity: Any, expiry: Any, ttl: Any) -> tuple[str, tuple[float, str]]:
    if ttl not in TTLS:
        raise ValueError(f"not a TTL: {ttl!r}")
    return str(identity), (_finite(expiry), str(ttl))


def _markers(shard: Any, plan: Any, markers: Any) -> tuple[int, str, dict[int, int]]:
    placed = {int(position): int(count) for position, count in json.loads(markers)}
    return int(shard), str(plan), placed


@dataclass(frozen=True)
class Reservation:
    """The daily cap's check across instances: `key` of the reservation made (None: the
    cap refused it), the spend of the last 24 hours, and what other requests under way
    have reserved."""

    key: int | None
    spent_usd: float
    reserved_usd: float


def alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (the state folder is local)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class Shared:
    def __init__(self, ledger: Ledger, *, instance: str | None = None) -> None:
        self.ledger = ledger
        self.pid = os.getpid()
        self.instance = instance or f"{self.pid}-{uuid.uuid4().hex[:8]}"
        self._warned = False

    def _change(self, action: Callable[[sqlite3.Connection], T], default: T) -> T:
        try:
            return self.ledger.changing(action)
        except StorageFault as fault:
            self._warn(str(fault))
            return default

    def _read(self, action: Callable[[sqlite3.Connection], T], default: T) -> T:
        try:
            return self.ledger.reading(action)
        except LedgerUnavailableError as exc:
            self._warn(str(exc))
            return default

    def _warn(self, why: str) -> None:
        # Once: a ledger locked for minutes must not fill the log on every request.
        level = logging.DEBUG if self._warned else logging.WARNING
        log.log(level, "instances sharing this state folder cannot share what they "
                "know (%s): this one goes on with its own", why)  # fmt: skip
        self._warned = True

    def _gone(self, db: sqlite3.Connection, table: str, now: float) -> None:
        """Delete `table`'s rows of processes that are gone, or past their expiry."""
        rows = db.execute(f"SELECT DISTINCT pid FROM {table}").fetchall()
        dead = [pid for (pid,) in rows if pid != self.pid and not alive(pid)]
        db.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))
        db.executemany(f"DELETE FROM {table} WHERE pid = ?", [(pid,) for pid in dead])

    # --- cache entries ----------------------------------------------------------------

    def entries(
        self, backend: str, corpus: str, now: float
    ) -> tuple[dict[str, tuple[float, str]], int]:
        """The entries alive at `now` that any instance made, and the last id read (for
        `entries_since`). Old rows are dropped on the way."""

        def read(db: sqlite3.Connection) -> tuple[dict[str, tuple[float, str]], int]:
            db.execute("DELETE FROM shared_entries WHERE expiry < ?", (now - FORGET_AFTER_SECONDS,))
            rows = db.execute(
                "SELECT identity, expiry, ttl FROM shared_entries "
                "WHERE backend = ? AND corpus = ? AND expiry > ?",
                (backend, corpus, now),
            ).fetchall()
            (last,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM shared_entries").fetchone()
            return dict(decoded(rows, lambda r: _entry(*r))), int(last)

        nothing: tuple[dict[str, tuple[float, str]], int] = ({}, 0)
        return self._change(read, nothing)

    def publish_entries(
        self, backend: str, corpus: str, changed: Mapping[str, tuple[float, str]]
    ) -> None:
        """What this instance learnt of `changed` entries (an expiry of 0: believed gone)."""
        if not changed:
            return

        def write(db: sqlite3.Connection) -> None:
            for identity, (expiry, ttl) in changed.items():
                db.execute(
                    "DELETE FROM shared_entries WHERE backend = ? AND identity = ?",
                    (backend, identity),
                )
                db.execute(
                    "INSERT INTO shared_entries (backend, corpus, identity, expiry, ttl, "
                    "instance) VALUES (?, ?, ?, ?, ?, ?)",
                    (backend, corpus, identity, expiry, ttl, self.instance),
                )

        self._change(write, None)

    def entries_since(
        self, backend: str, corpus: str, after: int
    ) -> tuple[dict[str, tuple[float, str]], int]:
        """What other instances learnt of entries since id `after`, and the last id read."""

        def read(db: sqlite3.Connection) -> tuple[dict[str, tuple[float, str]], int]:
            rows = db.execute(
                "SELECT id, identity, expiry, ttl, instance FROM shared_entries "
                "WHERE backend = ? AND corpus = ? AND id > ? ORDER BY id",
                (backend, corpus, after),
            ).fetchall()
            theirs = [r[1:4] for r in rows if r[4] != self.instance]
            news = dict(decoded(theirs, lambda r: _entry(*r)))
            return news, max((int(r[0]) for r in rows), default=after)

        nothing: tuple[dict[str, tuple[float, str]], int] = ({}, after)
        return self._read(read, nothing)

    # --- questions --------------------------------------------------------------------

    def last_question(self, corpus: str, now: float) -> int:
        """The id of the last question recorded (what came before is in the ledger's rows)."""

        def read(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM shared_questions WHERE at < ?", (now - FORGET_AFTER_SECONDS,))
            (last,) = db.execute(
                "SELECT COALESCE(MAX(id), 0) FROM shared_questions WHERE corpus = ?", (corpus,)
            ).fetchone()
            return int(last)

        return self._change(read, 0)

    def asked(self, corpus: str, shard: int, at: float) -> None:
        self._change(
            lambda db: db.execute(
                "INSERT INTO shared_questions (corpus, shard, at, instance) VALUES (?, ?, ?, ?)",
                (corpus, shard, at, self.instance),
            ),
            None,
        )

    def questions_since(self, corpus: str, after: int) -> tuple[list[tuple[int, float]], int]:
        """(shard, time) of other instances' questions since id `after`, and the last id."""

        def read(db: sqlite3.Connection) -> tuple[list[tuple[int, float]], int]:
            rows = db.execute(
                "SELECT id, shard, at, instance FROM shared_questions "
                "WHERE corpus = ? AND id > ? ORDER BY id",
                (corpus, after),
            ).fetchall()
            theirs = [r[1:3] for r in rows if r[3] != self.instance]
            asked = decoded(theirs, lambda r: (int(r[0]), _finite(r[1])))
            return asked, max((int(r[0]) for r in rows), default=after)

        nothing: tuple[list[tuple[int, float]], int] = ([], after)
        return self._read(read, nothing)

    # --- marker blocks ----------------------------------------------------------------

    def publish_markers(
        self, corpus: str, shard: int, plan: str, markers: Mapping[int, int]
    ) -> None:
        """The marker blocks this instance placed on `shard` of the plan `plan` (an identity
        of its documents in their order): the shard's one row, replaced."""
        self._change(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO shared_markers (corpus, shard, plan, markers, instance) "
                "VALUES (?, ?, ?, ?, ?)",
                (corpus, shard, plan, json.dumps(sorted(markers.items())), self.instance),
            ),
            None,
        )

    def markers_of_others(self, corpus: str) -> list[tuple[int, str, dict[int, int]]]:
        """(shard, plan, markers) of each shard whose markers another instance placed last."""

        def read(db: sqlite3.Connection) -> list[tuple[int, str, dict[int, int]]]:
            rows = db.execute(
                "SELECT shard, plan, markers FROM shared_markers "
                "WHERE corpus = ? AND instance != ?",
                (corpus, self.instance),
            ).fetchall()
            return decoded(rows, lambda r: _markers(*r))

        nothing: list[tuple[int, str, dict[int, int]]] = []
        return self._read(read, nothing)

    # --- the daily cap ----------------------------------------------------------------

    def reserve(
        self,
        corpus: str,
        backend: str,
        usd: float,
        *,
        cap: float,
        since: float,
        now: float,
        hold: float,
    ) -> Reservation | None:
        """Reserve `usd` against `cap` if the spend on `corpus` with `backend` since
        `since`, what every instance has reserved, and `usd` fit it; all read and written
        in one transaction. The reservation lapses after `hold` seconds if not released.
        None: the ledger cannot be used (the caller checks on its own)."""

        def check(db: sqlite3.Connection) -> Reservation:
            self._gone(db, "spend_reservations", now)
            (spent,) = db.execute(
                "SELECT COALESCE(SUM(cost_usd), 0) + COALESCE(SUM(CASE WHEN billing = 'maybe' "
                "THEN estimate_usd END), 0) FROM requests WHERE corpus = ? AND backend = ? "
                "AND at >= ?",
                (corpus, backend, since),
            ).fetchone()
            (reserved,) = db.execute(
                "SELECT COALESCE(SUM(usd), 0) FROM spend_reservations "
                "WHERE corpus = ? AND backend = ?",
                (corpus, backend),
            ).fetchone()
            if spent + reserved + usd > cap:
                return Reservation(None, float(spent), float(reserved))
            cursor = db.execute(
                "INSERT INTO spend_reservations (corpus, backend, usd, expires, instance, pid) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (corpus, backend, usd, now + hold, self.instance, self.pid),
            )
            return Reservation(cursor.lastrowid, float(spent), float(reserved))

        return self._change(check, None)

    def release(self, key: int) -> None:
        self._change(
            lambda db: db.execute("DELETE FROM spend_reservations WHERE id = ?", (key,)), None
        )

    # --- rate limits ------------------------------------------------------------------

    def publish_limits(
        self, backend: str, model: str, pool: str, buckets: str, seen: float
    ) -> None:
        """The buckets as this instance knows them at `seen` (JSON)."""
        self._change(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO shared_limits (backend, model, pool, buckets, seen, "
                "instance) VALUES (?, ?, ?, ?, ?, ?)",
                (backend, model, pool, buckets, seen, self.instance),
            ),
            None,
        )

    def limits_since(
        self, backend: str, model: str, pool: str, after: float
    ) -> tuple[str, float] | None:
        """The buckets (JSON) and when, if another instance knew them later than `after`."""

        def read(db: sqlite3.Connection) -> tuple[str, float] | None:
            row = db.execute(
                "SELECT buckets, seen FROM shared_limits WHERE backend = ? AND model = ? "
                "AND pool = ? AND seen > ? AND instance != ?",
                (backend, model, pool, after, self.instance),
            ).fetchone()
            found = decoded([row] if row else [], lambda r: (str(r[0]), _finite(r[1])))
            return found[0] if found else None

        return self._read(read, None)

    # --- cold writes ------------------------------------------------------------------

    def claim(self, backend: str, identities: Collection[str], *, now: float, hold: float) -> bool:
        """Claim the writing of `identities` for this instance, unless another live instance
        writes one of them: False then (wait, and read what it writes)."""
        if not identities:
            return True

        def take(db: sqlite3.Connection) -> bool:
            self._gone(db, "cold_writes", now)
            for chunk, marks in in_batches(identities):
                held = db.execute(
                    f"SELECT 1 FROM cold_writes WHERE backend = ? AND instance != ? "
                    f"AND identity IN ({marks}) LIMIT 1",
                    (backend, self.instance, *chunk),
                ).fetchone()
                if held:
                    return False
            db.executemany(
                "INSERT OR REPLACE INTO cold_writes (backend, identity, instance, pid, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                [(backend, i, self.instance, self.pid, now + hold) for i in identities],
            )
            return True

        return self._change(take, True)

    def release_claims(self, backend: str, identities: Collection[str]) -> None:
        if not identities:
            return
        self._change(
            lambda db: db.executemany(
                "DELETE FROM cold_writes WHERE backend = ? AND identity = ? AND instance = ?",
                [(backend, i, self.instance) for i in identities],
            ),
            None,
        )

    def held_by_others(self, backend: str, identities: Collection[str], now: float) -> bool:
        """Whether another live instance still writes one of `identities`."""

        def read(db: sqlite3.Connection) -> bool:
            for chunk, marks in in_batches(identities):
                rows = db.execute(
                    f"SELECT pid FROM cold_writes WHERE backend = ? AND instance != ? "
                    f"AND expires > ? AND identity IN ({marks})",
                    (backend, self.instance, now, *chunk),
                ).fetchall()
                if any(alive(pid) for (pid,) in rows):
                    return True
            return False

        return self._read(read, False)


class SharedSpend:
    """The daily cap's reservations (api/spending.Reservations) for one corpus, with the
    backend answering at each check."""

    def __init__(self, shared: Shared, corpus: str, backend: Callable[[], str]) -> None:
        self._shared = shared
        self._corpus = corpus
        self._backend = backend

    def reserve(
        self, usd: float, *, cap: float, since: float, now: float, hold: float
    ) -> Reservation | None:
        return self._shared.reserve(
            self._corpus, self._backend(), usd, cap=cap, since=since, now=now, hold=hold
        )

    def release(self, key: int) -> None:
        self._shared.release(key)
