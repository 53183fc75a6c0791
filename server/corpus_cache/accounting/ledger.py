"""The ledger: a SQLite file recording every request and caching token counts.

Storage faults (a lock held by another process past the busy timeout, a full disk, a
read-only or corrupt file) never leave this module as sqlite3 errors. Every write runs in
one transaction that is rolled back on any error. A request row that cannot be written is
kept in the journal (ledger_journal.py) and added at the next successful write: `record`
says so, for the answer to say it. Token counts that cannot be stored are dropped (they
are counted again later). A read that fails raises LedgerUnavailableError, which says why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from corpus_cache.accounting.journal import Journal, Row
from corpus_cache.accounting.storage import (
    INSERT_ROW,
    M001_INITIAL,
    M002_SHARD_AND_TTL,
    M003_CACHE_MISS_REASON,
    M004_ROW_KEY,
    M005_COUNTS_BY_BACKEND,
    M007_BILLING,
    MIGRATIONS,
    ROW_COLUMNS,
    describe_fault,
    in_batches,
    is_corrupt,
    is_storage_fault,
    migrate,
    transaction,
)
from corpus_cache.errors import LedgerUnavailableError
from corpus_cache.models.pricing import Usage, hit_rate

__all__ = [
    "BILLED",
    "BUSY_TIMEOUT",
    "M001_INITIAL",
    "M002_SHARD_AND_TTL",
    "M003_CACHE_MISS_REASON",
    "M004_ROW_KEY",
    "M005_COUNTS_BY_BACKEND",
    "M007_BILLING",
    "MAYBE",
    "MIGRATIONS",
    "UNBILLED",
    "Ledger",
    "Recorded",
    "RequestRecord",
    "StorageFault",
    "Totals",
]  # fmt: skip

log = logging.getLogger(__name__)

BUSY_TIMEOUT = 2.0  # seconds a write waits for another process's lock, then is journaled
# After a write failed, until one succeeds: a write waits briefly, so that a lock held for
# minutes does not stall every request by the full timeout (its row is journaled anyway).
BUSY_TIMEOUT_BEHIND = 0.1

# What the API did with an attempt, as far as is known (storage.M007_BILLING).
BILLED, UNBILLED, MAYBE = "billed", "unbilled", "maybe"

T = TypeVar("T")


@dataclass(frozen=True)
class RequestRecord:
    kind: str  # "ask", "warm", "keep-warm"
    corpus: str
    model: str
    backend: str
    outcome: str  # "ok" or "error"
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    uncached_cost_usd: float = 0.0
    snapshot: int | None = None
    message_id: str | None = None
    latency_ms: float | None = None
    error: str | None = None
    at: float | None = None
    shard: int | None = None
    ttl: str | None = None
    cache_miss_reason: str | None = None  # from the API's cache diagnostics, when it gave one
    cache_missed_tokens: int | None = None
    emulator_pid: int | None = None  # an offline answer: the process whose memory holds its cache
    billing: str = BILLED  # BILLED, UNBILLED or MAYBE
    estimate_usd: float | None = None  # MAYBE: what it would cost if it ran (not in cost_usd)
    attempt: int | None = None  # its number among the attempts of one call, from 1


@dataclass(frozen=True)
class LedgerRow:
    """One request as the ledger holds it: a `RequestRecord` as written, with its id."""

    id: int
    at: float
    kind: str
    corpus: str
    model: str
    backend: str
    outcome: str
    snapshot: int | None
    message_id: str | None
    input_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    output_tokens: int
    cost_usd: float
    uncached_cost_usd: float
    latency_ms: float | None
    error: str | None
    shard: int | None
    ttl: str | None
    cache_miss_reason: str | None
    cache_missed_tokens: int | None
    row_key: str | None
    emulator_pid: int | None = None
    billing: str | None = None
    estimate_usd: float | None = None
    attempt: int | None = None

    @property
    def prompt_tokens(self) -> int:
        return (
            self.input_tokens + self.cache_read_tokens + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
        )  # fmt: skip


_ROW_FIELDS = frozenset(f.name for f in fields(LedgerRow))


@dataclass(frozen=True)
class Recorded:
    """What became of a row: `unrecorded` says why the ledger could not write it and where
    it is kept until it can (None: it is in the ledger)."""

    row_key: str
    unrecorded: str | None = None


@dataclass(frozen=True)
class Totals:
    requests: int
    errors: int
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    output_tokens: int
    cost_usd: float
    uncached_cost_usd: float
    # Attempts that may have been billed, and what they would cost if they ran: kept apart
    # from cost_usd, which is what the API surely billed.
    maybe_requests: int = 0
    maybe_usd: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def saved_usd(self) -> float:
        return self.uncached_cost_usd - self.cost_usd

    @property
    def hit_rate(self) -> float:
        return hit_rate(self.cache_read_tokens, self.prompt_tokens)

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "hit_rate": round(self.hit_rate, 4),
            "spent_usd": round(self.cost_usd, 6),
            "uncached_usd": round(self.uncached_cost_usd, 6),
            "saved_usd": round(self.saved_usd, 6),
            "maybe_billed_requests": self.maybe_requests,
            "maybe_billed_usd": round(self.maybe_usd, 6),
        }


class StorageFault(Exception):
    """The ledger's file cannot be written (or opened) now; the message says why."""


class Ledger:
    """One SQLite file; safe to use from several threads of one process."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self.journal = Journal(path)
        self._busy_timeout = self._waits = busy_timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pending: dict[str, Row] = {}  # rows known not to be in the ledger yet
        self._unjournaled: list[Row] = []  # of those, the ones the journal refused too
        self.fault: str | None = None  # why the last write failed, until one succeeds
        with self._lock:
            for row in self.journal.rows():
                self._pending[row["row_key"]] = row
            try:
                self._connection()
                if self._pending:
                    self._write(lambda db: None)  # replay what an earlier run journaled
            except StorageFault as fault:
                self._failed(fault)
                log.warning("the ledger %s cannot be written: %s; requests are kept in %s "
                            "until it can", path, fault, self.journal.path)  # fmt: skip
        self.journal.ensure_reserve()

    def _connection(self) -> sqlite3.Connection:
        """The open connection, opened (and migrated) if it is not. Raises StorageFault."""
        if self._db is not None:
            return self._db
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit outside _transaction: nothing is left uncommitted between writes.
            # WAL with synchronous=NORMAL: a returned commit survives the process being
            # killed; only a power cut can lose the last few (FULL would fsync every one).
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StorageFault(self._describe(exc)) from exc
        try:
            db.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            migrate(db)
        except sqlite3.Error as exc:
            db.close()
            raise StorageFault(self._describe(exc)) from exc
        self._db = db
        return db

    def _disconnect(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()  # rolls back whatever is still open

    def close(self) -> None:
        with self._lock:
            if self._unjournaled:  # a last chance for rows kept only in memory
                try:
                    self._write(lambda db: None)
                except StorageFault as fault:
                    self._journal_or_log(self._unjournaled, fault)
            self._disconnect()

    # --- writing ----------------------------------------------------------------------

    def _write(self, action: Callable[[sqlite3.Connection], object]) -> None:
        """Run `action` in one transaction, together with the rows waiting to be added
        (from the journal and from memory). Raises StorageFault, with nothing left open."""
        db = self._connection()
        waiting: list[Row] = []
        added: list[str] = []
        try:
            behind = self.fault is not None or self._pending
            timeout = min(self._busy_timeout, BUSY_TIMEOUT_BEHIND) if behind else self._busy_timeout
            db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._waits = timeout
            with self.journal.taken() as journaled:
                waiting = [*journaled, *self._unjournaled]
                with transaction(db):
                    if waiting:
                        db.executemany(INSERT_ROW, [_values(row) for row in waiting])
                    action(db)
                    # Rows another server sharing the ledger replayed from the journal.
                    added = _present(db, set(self._pending) - {r["row_key"] for r in waiting})
        except sqlite3.Error as exc:
            if not is_storage_fault(exc):
                raise
            if db.in_transaction or is_corrupt(exc):
                self._disconnect()  # reopened, and checked again, at the next write
            raise StorageFault(self._describe(exc)) from exc
        for key in added:
            self._pending.pop(key, None)
        if waiting:
            for row in waiting:
                self._pending.pop(row["row_key"], None)
            self._unjournaled.clear()
            log.warning("the ledger %s is writable again: %d request(s) added from its "
                        "journal", self.path, len(waiting))  # fmt: skip
            self.journal.ensure_reserve()
        self.fault = None

    def _failed(self, fault: StorageFault) -> None:
        self.fault = str(fault)

    def _journal_or_log(self, rows: list[Row], fault: StorageFault) -> list[Row]:
        """Journal `rows`; those the journal refuses too are logged whole (the last place
        they can be found) and returned."""
        refused: list[Row] = []
        for row in rows:
            try:
                self.journal.append(row)
            except OSError as exc:
                refused.append(row)
                log.error(
                    "the ledger %s could not record a request (%s), nor could its journal %s "
                    "(%s); the row, to add by hand if the server stops before the ledger is "
                    "writable: %s", self.path, fault, self.journal.path, exc.strerror or exc,
                    json.dumps(row),
                )  # fmt: skip
        return refused

    def _store(self, sql: str, rows: Sequence[tuple[Any, ...]], what: str) -> bool:
        """`rows` written by `sql`; False, logged with `what` was lost, when the ledger
        cannot be written (what is stored here is worked out again: nothing is lost)."""
        with self._lock:
            try:
                self._write(lambda db: db.executemany(sql, rows))
            except StorageFault as fault:
                self._failed(fault)
                log.warning("%s were not stored in the ledger %s: %s", what, self.path, fault)
                return False
        return True

    # --- token counts -----------------------------------------------------------------

    def token_counts(self, model: str, backend: str, keys: Iterable[str]) -> dict[str, int]:
        """The stored counts of `keys` that `backend` made for `model`; none when the ledger
        cannot be read (the caller counts them again)."""
        found: dict[str, int] = {}
        try:
            for chunk, marks in in_batches(keys):
                _, rows = self._query(
                    f"SELECT content_key, tokens FROM token_counts "
                    f"WHERE model = ? AND backend = ? AND content_key IN ({marks})",
                    [model, backend, *chunk],
                )
                found.update(rows)
        except LedgerUnavailableError as exc:
            log.warning("%s; token counts are taken from the API instead", exc)
            return {}
        return found

    def store_token_counts(
        self,
        model: str,
        backend: str,
        counts: dict[str, int],
        sketches: Mapping[str, tuple[str, float]] | None = None,
    ) -> bool:
        """Store counts `backend` made; False when the ledger cannot be written (they are
        counted again later: nothing is lost). `sketches`: per key, the kind and prior the
        local estimate gave the document (api/estimate.py): such counts calibrate it."""
        now = time.time()
        known = sketches or {}
        rows = [
            (key, model, backend, tokens, now, *known.get(key, (None, None)))
            for key, tokens in counts.items()
        ]
        return self._store(
            "INSERT OR REPLACE INTO token_counts "
            "(content_key, model, backend, tokens, counted_at, kind, prior) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows, f"token counts of {len(rows)} document(s) (they will be counted again)",
        )  # fmt: skip

    def calibration_samples(
        self, model: str, backend: str, limit: int = 2_000
    ) -> list[tuple[str, float, int]]:
        """The latest (kind, prior, tokens) of counts `backend` made for `model` that the
        local estimate had sketched; none when the ledger cannot be read (the estimate is
        calibrated again)."""
        try:
            _, rows = self._query(
                "SELECT kind, prior, tokens FROM token_counts WHERE model = ? AND backend = ? "
                "AND kind IS NOT NULL AND prior IS NOT NULL ORDER BY counted_at DESC LIMIT ?",
                [model, backend, limit],
            )
            # Sums learned from usage calibrate the ratio of their kind (GROUP), not its bound.
            _, sums = self._query(
                "SELECT 'group:' || kind, prior, tokens FROM token_sums WHERE model = ? "
                "AND backend = ? AND kind IS NOT NULL AND prior IS NOT NULL "
                "ORDER BY counted_at DESC LIMIT ?",
                [model, backend, limit],
            )
            rows += sums
        except LedgerUnavailableError as exc:
            log.warning("%s; the token estimate is calibrated again", exc)
            return []
        return [(str(kind), float(prior), int(tokens)) for kind, prior, tokens in rows]

    def store_token_sums(
        self,
        model: str,
        backend: str,
        sums: Mapping[tuple[str, ...], int],
        sketches: Mapping[tuple[str, ...], tuple[str, float]],
    ) -> bool:
        """Store exact sums of several documents' counts `backend` made for `model`, by their
        content keys; `sketches`: the kind and summed prior of those all of one kind (they
        calibrate the estimate). False when the ledger cannot be written."""
        now = time.time()
        rows = [
            (" ".join(keys), model, backend, tokens, now, *sketches.get(keys, (None, None)))
            for keys, tokens in sums.items()
        ]
        return self._store(
            "INSERT OR REPLACE INTO token_sums "
            "(members, model, backend, tokens, counted_at, kind, prior) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows, f"{len(rows)} sum(s) of token counts",
        )  # fmt: skip

    def token_sums(
        self, model: str, backend: str, limit: int = 10_000
    ) -> dict[tuple[str, ...], int]:
        """The latest sums `backend` made for `model`, by their members' content keys; none
        when the ledger cannot be read."""
        try:
            _, rows = self._query(
                "SELECT members, tokens FROM token_sums WHERE model = ? AND backend = ? "
                "ORDER BY counted_at DESC LIMIT ?",
                [model, backend, limit],
            )
        except LedgerUnavailableError as exc:
            log.warning("%s; sums of token counts are not used", exc)
            return {}
        return {tuple(str(members).split(" ")): int(tokens) for members, tokens in rows}

    def token_head(self, model: str, backend: str, system_key: str) -> int | None:
        """The head of a request (api/learned.py) `backend` showed for `model` and a system
        text; None if not known or the ledger cannot be read."""
        try:
            _, rows = self._query(
                "SELECT tokens FROM token_heads WHERE system_key = ? AND model = ? AND backend = ?",
                [system_key, model, backend],
            )
        except LedgerUnavailableError as exc:
            log.warning("%s; the head of requests is learned again", exc)
            return None
        return int(rows[0][0]) if rows else None

    def store_token_head(self, model: str, backend: str, system_key: str, tokens: int) -> bool:
        return self._store(
            "INSERT OR REPLACE INTO token_heads (system_key, model, backend, tokens) "
            "VALUES (?, ?, ?, ?)",
            [(system_key, model, backend, tokens)], "the head of requests",
        )  # fmt: skip

    # --- sketches ---------------------------------------------------------------------

    def sketches(self, version: int, keys: Iterable[str]) -> dict[str, tuple[str, float]]:
        """The stored (kind, prior) of `keys` under the estimate's sketch `version`; none
        when the ledger cannot be read (the documents are sketched again)."""
        found: dict[str, tuple[str, float]] = {}
        try:
            for chunk, marks in in_batches(keys):
                _, rows = self._query(
                    f"SELECT content_key, kind, prior FROM sketches "
                    f"WHERE version = ? AND content_key IN ({marks})",
                    [version, *chunk],
                )
                found.update((key, (str(kind), float(prior))) for key, kind, prior in rows)
        except LedgerUnavailableError as exc:
            log.warning("%s; documents are sketched again", exc)
            return {}
        return found

    def store_sketches(self, version: int, sketches: Mapping[str, tuple[str, float]]) -> bool:
        """Store (kind, prior) by content key; False when the ledger cannot be written (they
        are sketched again at the next start: nothing is lost)."""
        rows = [(key, version, kind, prior) for key, (kind, prior) in sketches.items()]
        return self._store(
            "INSERT OR REPLACE INTO sketches (content_key, version, kind, prior) "
            "VALUES (?, ?, ?, ?)",
            rows, f"sketches of {len(rows)} document(s)",
        )  # fmt: skip

    # --- requests ---------------------------------------------------------------------

    def record(self, record: RequestRecord) -> Recorded:
        """Write a request's row. When the ledger cannot be written, the row is kept in the
        journal (or, if even that fails, in memory and the log) and added later; the
        result says so."""
        row = _row(record)
        with self._lock:
            try:
                self._write(lambda db: db.execute(INSERT_ROW, _values(row)))
            except StorageFault as fault:
                self._failed(fault)
                self._pending[row["row_key"]] = row
                if self._journal_or_log([row], fault):
                    self._unjournaled.append(row)
                    return Recorded(
                        row["row_key"],
                        f"{fault}; nor could its journal {self.journal.path}: the row is kept "
                        "in memory and in the server's log, and will be added when the ledger "
                        "is writable",
                    )
                log.warning("the ledger %s could not record a request (%s): %s; kept in %s, to "
                            "be added when it is writable", self.path, record.kind, fault,
                            self.journal.path)  # fmt: skip
                return Recorded(
                    row["row_key"],
                    f"{fault}; it is kept in {self.journal.path} and will be added when the "
                    "ledger is writable",
                )
        return Recorded(row["row_key"])

    # --- what instances sharing the ledger tell each other (accounting/shared.py) -------

    def changing(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """`action(db)` in one write transaction (BEGIN IMMEDIATE: no other process writes
        meanwhile), with the rows waiting to be added. Raises StorageFault."""
        result: list[T] = []
        with self._lock:
            try:
                self._write(lambda db: result.append(action(db)))
            except StorageFault as fault:
                self._failed(fault)
                raise
        return result[0]

    def reading(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """`action(db)` on the ledger's connection, outside a transaction. Raises
        LedgerUnavailableError."""
        with self._lock:
            try:
                return action(self._connection())
            except StorageFault as fault:
                raise LedgerUnavailableError(f"the ledger cannot be read: {fault}") from fault
            except sqlite3.Error as exc:
                if not is_storage_fault(exc):
                    raise
                raise LedgerUnavailableError(
                    f"the ledger cannot be read: {self._describe(exc)}"
                ) from exc

    @property
    def waiting(self) -> int:
        """Requests this process knows of that are not in the ledger yet."""
        with self._lock:
            return len(self._pending)

    # --- reading ----------------------------------------------------------------------

    def _query(self, query: str, params: list[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows. Raises LedgerUnavailableError when the file cannot be read."""
        with self._lock:
            try:
                db = self._connection()
                cursor = db.execute(query, params)
                return [c[0] for c in cursor.description], cursor.fetchall()
            except StorageFault as fault:
                raise LedgerUnavailableError(f"the ledger cannot be read: {fault}") from fault
            except sqlite3.Error as exc:
                if not is_storage_fault(exc):
                    raise
                if is_corrupt(exc):
                    self._disconnect()
                raise LedgerUnavailableError(
                    f"the ledger cannot be read: {self._describe(exc)}"
                ) from exc

    def _rows(self, query: str, params: list[Any]) -> list[LedgerRow]:
        names, rows = self._query(query, params)
        return [
            LedgerRow(**{k: v for k, v in zip(names, row, strict=True) if k in _ROW_FIELDS})
            for row in rows
        ]

    def requests(self, corpus: str | None = None, limit: int = 100) -> list[LedgerRow]:
        query = "SELECT * FROM requests"
        params: list[Any] = []
        if corpus is not None:
            query += " WHERE corpus = ?"
            params.append(corpus)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return self._rows(query, params)

    def totals(
        self, corpus: str | None = None, since: float | None = None, backend: str | None = None
    ) -> Totals:
        """What the ledger holds, plus the rows waiting in the journal: money spent is
        counted (by the daily cap too) whether or not its row could be written yet. With
        `backend`, only the requests that backend answered."""
        where, params = _where(corpus, since, backend)
        _, rows = self._query(
            f"""SELECT COUNT(*), COALESCE(SUM(outcome != 'ok'), 0),
                COALESCE(SUM(input_tokens), 0), COALESCE(SUM(cache_read_tokens), 0),
                COALESCE(SUM(cache_write_5m_tokens + cache_write_1h_tokens), 0),
                COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0),
                COALESCE(SUM(uncached_cost_usd), 0), COALESCE(SUM(billing = 'maybe'), 0),
                COALESCE(SUM(CASE WHEN billing = 'maybe' THEN estimate_usd END), 0)
                FROM requests {where}""",
            params,
        )
        with self._lock:
            waiting = list(self._pending.values())
        return Totals(*rows[0]) + _totals_of(waiting, corpus, since, backend)

    def history(self, corpus: str | None = None) -> list[LedgerRow]:
        """Every request, oldest first."""
        where, params = _where(corpus, None)
        return self._rows(f"SELECT * FROM requests {where} ORDER BY at, id", params)

    def requests_by_kind(
        self, corpus: str | None = None, since: float | None = None, backend: str | None = None
    ) -> dict[str, tuple[int, int]]:
        """kind -> (requests, of which errors)."""
        where, params = _where(corpus, since, backend)
        _, rows = self._query(
            f"SELECT kind, COUNT(*), COALESCE(SUM(outcome != 'ok'), 0) FROM requests {where} "
            "GROUP BY kind ORDER BY kind",
            params,
        )
        return {kind: (count, errors) for kind, count, errors in rows}

    def backends(self, corpus: str | None = None) -> list[str]:
        """The backends that answered requests, in the ledger or waiting in its journal."""
        where, params = _where(corpus, None)
        _, rows = self._query(f"SELECT DISTINCT backend FROM requests {where}", params)
        with self._lock:
            waiting = {
                str(r["backend"]) for r in self._pending.values()
                if corpus is None or r["corpus"] == corpus
            }  # fmt: skip
        return sorted({str(backend) for (backend,) in rows} | waiting)

    def last_by_shard(
        self, corpus: str | None = None, *, touched_cache: bool = False
    ) -> list[LedgerRow]:
        """The last successful request of each (corpus, shard); with `touched_cache`, the last
        that read or wrote the cache."""
        where, params = _where(corpus, None)
        clauses = [where or "WHERE 1", "shard IS NOT NULL", "outcome = 'ok'"]
        if touched_cache:
            clauses.append("cache_read_tokens + cache_write_5m_tokens + cache_write_1h_tokens > 0")
        # SQLite takes the bare columns of an aggregate query from the row MAX() picked.
        return self._rows(
            f"SELECT *, MAX(id) AS last_id FROM requests {' AND '.join(clauses)} "
            "GROUP BY corpus, shard ORDER BY corpus, shard",
            params,
        )

    def _describe(self, exc: BaseException) -> str:
        return describe_fault(exc, self._waits)


def _row(record: RequestRecord) -> Row:
    u = record.usage
    return {
        "at": record.at if record.at is not None else time.time(),
        "kind": record.kind, "corpus": record.corpus, "model": record.model,
        "backend": record.backend, "snapshot": record.snapshot, "message_id": record.message_id,
        "input_tokens": u.input_tokens, "cache_read_tokens": u.cache_read_tokens,
        "cache_write_5m_tokens": u.cache_write_5m_tokens,
        "cache_write_1h_tokens": u.cache_write_1h_tokens, "output_tokens": u.output_tokens,
        "cost_usd": record.cost_usd, "uncached_cost_usd": record.uncached_cost_usd,
        "latency_ms": record.latency_ms, "outcome": record.outcome, "error": record.error,
        "shard": record.shard, "ttl": record.ttl, "cache_miss_reason": record.cache_miss_reason,
        "cache_missed_tokens": record.cache_missed_tokens, "row_key": uuid.uuid4().hex,
        "emulator_pid": record.emulator_pid, "billing": record.billing,
        "estimate_usd": record.estimate_usd, "attempt": record.attempt,
    }  # fmt: skip


def _present(db: sqlite3.Connection, keys: set[str]) -> list[str]:
    """Those of `keys` whose rows are in the ledger."""
    found = []
    for chunk, marks in in_batches(keys):
        rows = db.execute(f"SELECT row_key FROM requests WHERE row_key IN ({marks})", chunk)
        found += [key for (key,) in rows]
    return found


def _values(row: Row) -> tuple[Any, ...]:
    return tuple(row.get(column) for column in ROW_COLUMNS)


def _totals_of(
    rows: list[Row], corpus: str | None, since: float | None, backend: str | None = None
) -> Totals:
    """Totals of rows not in the ledger yet, as the SQL in Ledger.totals adds them up."""
    mine = [
        r for r in rows
        if (corpus is None or r["corpus"] == corpus) and (since is None or r["at"] >= since)
        and (backend is None or r["backend"] == backend)
    ]  # fmt: skip

    def total(*columns: str) -> int:
        return sum(int(r.get(c) or 0) for r in mine for c in columns)

    return Totals(
        len(mine), sum(r["outcome"] != "ok" for r in mine), total("input_tokens"),
        total("cache_read_tokens"), total("cache_write_5m_tokens", "cache_write_1h_tokens"),
        total("output_tokens"), sum(float(r.get("cost_usd") or 0) for r in mine),
        sum(float(r.get("uncached_cost_usd") or 0) for r in mine),
        sum(r.get("billing") == MAYBE for r in mine),
        sum(float(r.get("estimate_usd") or 0) for r in mine if r.get("billing") == MAYBE),
    )  # fmt: skip


def _where(
    corpus: str | None, since: float | None, backend: str | None = None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if backend is not None:
        clauses.append("backend = ?")
        params.append(backend)
    if corpus is not None:
        clauses.append("corpus = ?")
        params.append(corpus)
    if since is not None:
        clauses.append("at >= ?")
        params.append(since)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
