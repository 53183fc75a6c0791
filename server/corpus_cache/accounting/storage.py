"""The ledger's SQLite mechanics: the schema and its ordered migrations (`PRAGMA
user_version` says how many ran), transactions that always close, and what a storage
fault is and how to say it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator

M001_INITIAL = """
        CREATE TABLE token_counts (
            content_key TEXT NOT NULL,
            model TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            counted_at REAL NOT NULL,
            PRIMARY KEY (content_key, model)
        );
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            corpus TEXT NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            snapshot INTEGER,
            message_id TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_5m_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            uncached_cost_usd REAL NOT NULL DEFAULT 0,
            latency_ms REAL,
            outcome TEXT NOT NULL,
            error TEXT
        );
        CREATE INDEX requests_by_corpus_time ON requests (corpus, at);
"""

M002_SHARD_AND_TTL = """
        ALTER TABLE requests ADD COLUMN shard INTEGER;
        ALTER TABLE requests ADD COLUMN ttl TEXT;
"""

M003_CACHE_MISS_REASON = """
        ALTER TABLE requests ADD COLUMN cache_miss_reason TEXT;
        ALTER TABLE requests ADD COLUMN cache_missed_tokens INTEGER;
"""

# A key per row, so that a row replayed from the journal is added once however often it is.
M004_ROW_KEY = """
        ALTER TABLE requests ADD COLUMN row_key TEXT;
        CREATE UNIQUE INDEX requests_by_row_key ON requests (row_key);
"""

# Token counts keyed by the backend that counted them as well: the emulator's counts are
# approximations and must never stand for the API's. Counts stored before say not which
# backend made them, so they are dropped (counting is free; they are counted again).
# `emulator_pid`: the process holding the cache an offline answer wrote, so that `stats`
# says "warm until" only while that process lives.
M005_COUNTS_BY_BACKEND = """
        DROP TABLE token_counts;
        CREATE TABLE token_counts (
            content_key TEXT NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            counted_at REAL NOT NULL,
            PRIMARY KEY (content_key, model, backend)
        );
        ALTER TABLE requests ADD COLUMN emulator_pid INTEGER;
"""

# What the local estimate knew of a counted document (api/estimate.py): its kind of text
# and its prior. Counts that have them calibrate the estimate for their model and backend.
M006_COUNTS_CALIBRATE = """
        ALTER TABLE token_counts ADD COLUMN kind TEXT;
        ALTER TABLE token_counts ADD COLUMN prior REAL;
"""

# Every attempt is a row (docs/accounting.md): `billing` says whether the API billed it
# ("billed"), surely did not ("unbilled": an error status, no connection, a refusal), or may
# have ("maybe": sent, and no response began), with `estimate_usd`, what it would cost if it
# ran; `attempt` is its number among the attempts of one call. Rows written before say
# "billed" for what was charged, and "maybe" where their error said the API may bill.
M007_BILLING = """
        ALTER TABLE requests ADD COLUMN billing TEXT;
        ALTER TABLE requests ADD COLUMN estimate_usd REAL;
        ALTER TABLE requests ADD COLUMN attempt INTEGER;
        UPDATE requests SET billing = CASE
            WHEN outcome = 'ok' OR cost_usd > 0 THEN 'billed'
            WHEN outcome = 'error' AND error LIKE '%may bill a request%' THEN 'maybe'
            ELSE 'unbilled' END
"""

# The local estimate's sketch of each document estimated (api/estimate.py), by content
# key and the sketch's version: a warm restart loads them instead of reading every text
# again. A sketch depends on the text and title only, never on the model or the backend.
# `token_sums`: the exact sum of several documents' counts, learned from the usage of a
# request (api/learned.py), by model and backend like the counts; `members`: their content
# keys, sorted, space-separated; `kind` and `prior` when they are all of one kind.
# `token_heads`: what every request holds before its first document (framing and the system
# prompt, by the system text's hash), learned from usage likewise.
M008_SKETCHES_AND_SUMS = """
        CREATE TABLE sketches (
            content_key TEXT NOT NULL,
            version INTEGER NOT NULL,
            kind TEXT NOT NULL,
            prior REAL NOT NULL,
            PRIMARY KEY (content_key, version)
        ) WITHOUT ROWID;
        CREATE TABLE token_sums (
            members TEXT NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            counted_at REAL NOT NULL,
            kind TEXT,
            prior REAL,
            PRIMARY KEY (members, model, backend)
        );
        CREATE TABLE token_heads (
            system_key TEXT NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            PRIMARY KEY (system_key, model, backend)
        )
"""

# What instances sharing the state folder tell each other (accounting/shared.py):
# `shared_entries`, the cache entries believed alive (one row per entry, its id moved on at
# each change, so that `id > last seen` is what changed); `shared_questions`, when each
# question was asked (the TTL policy's gaps); `spend_reservations`, the daily cap's
# requests under way; `shared_limits`, the rate-limit buckets last known; `cold_writes`,
# who is writing a cold prefix. Rows of a process that is gone, or past `expires`, hold
# nothing.
M009_SHARED_STATE = """
        CREATE TABLE shared_entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            backend TEXT NOT NULL,
            corpus TEXT NOT NULL,
            identity TEXT NOT NULL,
            expiry REAL NOT NULL,
            ttl TEXT NOT NULL,
            instance TEXT NOT NULL
        );
        CREATE UNIQUE INDEX shared_entries_by_identity ON shared_entries (backend, identity);
        CREATE INDEX shared_entries_by_corpus ON shared_entries (backend, corpus, id);
        CREATE TABLE shared_questions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            corpus TEXT NOT NULL,
            shard INTEGER NOT NULL,
            at REAL NOT NULL,
            instance TEXT NOT NULL
        );
        CREATE INDEX shared_questions_by_corpus ON shared_questions (corpus, id);
        CREATE TABLE spend_reservations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            corpus TEXT NOT NULL,
            backend TEXT NOT NULL,
            usd REAL NOT NULL,
            expires REAL NOT NULL,
            instance TEXT NOT NULL,
            pid INTEGER NOT NULL
        );
        CREATE TABLE shared_limits (
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            pool TEXT NOT NULL,
            buckets TEXT NOT NULL,
            seen REAL NOT NULL,
            instance TEXT NOT NULL,
            PRIMARY KEY (backend, model, pool)
        );
        CREATE TABLE cold_writes (
            backend TEXT NOT NULL,
            identity TEXT NOT NULL,
            instance TEXT NOT NULL,
            pid INTEGER NOT NULL,
            expires REAL NOT NULL,
            PRIMARY KEY (backend, identity)
        )
"""

# Instances sharing the state folder (engine/keeper.py): each registers itself and beats a
# heartbeat; of those serving one corpus, one holds the lease that makes it the keeper, the
# one that sends background requests (keep-warm, pre-warm, staged builds) for all.
M010_KEEPERS = """
        CREATE TABLE instances (
            id TEXT PRIMARY KEY,
            corpus TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started REAL NOT NULL,
            heartbeat REAL NOT NULL
        );
        CREATE INDEX instances_by_corpus ON instances (corpus);
        CREATE TABLE keepers (
            corpus TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            pid INTEGER NOT NULL,
            since REAL NOT NULL,
            expires REAL NOT NULL
        )
"""

# Ordered; each runs once, in one transaction with the version bump.
# The marker blocks (cache/markers.py) each shard carries, the last an instance placed: a
# keeper's keep-warm request that turns a prefix into a 1-hour entry, or holds an edited
# tail, adds markers; a question in another instance must carry them to read that entry.
M011_SHARED_MARKERS = """
        CREATE TABLE shared_markers (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            corpus TEXT NOT NULL,
            shard INTEGER NOT NULL,
            plan TEXT NOT NULL,
            markers TEXT NOT NULL,
            instance TEXT NOT NULL,
            UNIQUE (corpus, shard)
        )
"""

MIGRATIONS: list[str] = [
    M001_INITIAL, M002_SHARD_AND_TTL, M003_CACHE_MISS_REASON, M004_ROW_KEY,
    M005_COUNTS_BY_BACKEND, M006_COUNTS_CALIBRATE, M007_BILLING, M008_SKETCHES_AND_SUMS,
    M009_SHARED_STATE,
    M010_KEEPERS,
    M011_SHARED_MARKERS,
]  # fmt: skip

ROW_COLUMNS = (
    "at", "kind", "corpus", "model", "backend", "snapshot", "message_id", "input_tokens",
    "cache_read_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "output_tokens",
    "cost_usd", "uncached_cost_usd", "latency_ms", "outcome", "error", "shard", "ttl",
    "cache_miss_reason", "cache_missed_tokens", "row_key", "emulator_pid", "billing",
    "estimate_usd", "attempt",
)  # fmt: skip
INSERT_ROW = (
    f"INSERT OR IGNORE INTO requests ({', '.join(ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})"
)


# Keys per `IN (...)` query: SQLite builds before 3.32 take at most 999 parameters.
IN_BATCH = 500


def in_batches(keys: Iterable[str]) -> Iterator[tuple[list[str], str]]:
    """`keys` in batches of IN_BATCH, each with its placeholders ("?,?,..."), for queries
    `... IN ({marks})` that no parameter limit refuses."""
    wanted = list(keys)
    for start in range(0, len(wanted), IN_BATCH):
        batch = wanted[start : start + IN_BATCH]
        yield batch, ",".join("?" * len(batch))


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE (the write lock, waited for up to the busy timeout) ... COMMIT; on
    any error, ROLLBACK: no transaction outlives its block. (SQLite may have rolled back
    already, as it does on a full disk.)"""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def migrate(db: sqlite3.Connection) -> None:
    (done,) = db.execute("PRAGMA user_version").fetchone()
    while done < len(MIGRATIONS):
        with transaction(db):
            # Read again under the write lock: another process may have migrated meanwhile.
            (done,) = db.execute("PRAGMA user_version").fetchone()
            if done >= len(MIGRATIONS):
                return
            for statement in MIGRATIONS[done].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={done + 1}")
        done += 1


def is_storage_fault(exc: sqlite3.Error) -> bool:
    """Locked, full, read-only, I/O or corrupt storage; not a mistake in a query."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def is_corrupt(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def describe_fault(exc: BaseException, busy_timeout: float) -> str:
    """Why the ledger cannot be used, in words a user can act on."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    detail = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return f"it is locked by another process (for more than {busy_timeout:g} s: {detail})"
    if name.startswith("SQLITE_FULL"):
        return f"the disk is full ({detail})"
    if name.startswith("SQLITE_READONLY"):
        return f"it is read-only ({detail})"
    if name.startswith("SQLITE_IOERR"):
        return f"it cannot be written ({detail})"
    if name.startswith("SQLITE_CANTOPEN") or isinstance(exc, OSError):
        return f"it cannot be opened ({detail})"
    if is_corrupt(exc):
        return (
            f"it is not a readable database ({detail}); move the file aside to start a new "
            "ledger, or restore it from a backup"
        )
    return detail
