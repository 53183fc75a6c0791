"""The ledger: a SQLite file recording every request and caching token counts.

The schema is created by ordered migrations (`PRAGMA user_version` says how many ran).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpus_cache.models.pricing import Usage, hit_rate

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

# Ordered; each runs once, in one transaction with the version bump.
MIGRATIONS: list[str] = [M001_INITIAL, M002_SHARD_AND_TTL, M003_CACHE_MISS_REASON]


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

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def saved_usd(self) -> float:
        return self.uncached_cost_usd - self.cost_usd

    @property
    def hit_rate(self) -> float:
        return hit_rate(self.cache_read_tokens, self.prompt_tokens)

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
        }


class Ledger:
    """One SQLite file; safe to use from several threads of one process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # Autocommit: each record() commits before it returns, so before its answer is sent.
        # WAL with synchronous=NORMAL: a returned commit survives the process being killed;
        # only a power cut can lose the last few (synchronous=FULL would fsync every one).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            (done,) = self._db.execute("PRAGMA user_version").fetchone()
            for number, migration in enumerate(MIGRATIONS[done:], start=done + 1):
                self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{migration}\nPRAGMA user_version={number};\nCOMMIT;"
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- token counts -----------------------------------------------------------------

    def token_counts(self, model: str, keys: Iterable[str]) -> dict[str, int]:
        wanted = list(keys)
        found: dict[str, int] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT content_key, tokens FROM token_counts "
                    f"WHERE model = ? AND content_key IN ({marks})",
                    [model, *chunk],
                )
                found.update(rows)
        return found

    def store_token_counts(self, model: str, counts: dict[str, int]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO token_counts VALUES (?, ?, ?, ?)",
                [(key, model, tokens, now) for key, tokens in counts.items()],
            )
            self._db.execute("COMMIT")

    # --- requests ---------------------------------------------------------------------

    def record(self, record: RequestRecord) -> int:
        u = record.usage
        with self._lock:
            cursor = self._db.execute(
                """INSERT INTO requests (at, kind, corpus, model, backend, snapshot, message_id,
                    input_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens,
                    output_tokens, cost_usd, uncached_cost_usd, latency_ms, outcome, error,
                    shard, ttl, cache_miss_reason, cache_missed_tokens)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    record.at if record.at is not None else time.time(),
                    record.kind, record.corpus, record.model, record.backend, record.snapshot,
                    record.message_id, u.input_tokens, u.cache_read_tokens,
                    u.cache_write_5m_tokens, u.cache_write_1h_tokens, u.output_tokens,
                    record.cost_usd, record.uncached_cost_usd, record.latency_ms,
                    record.outcome, record.error, record.shard, record.ttl,
                    record.cache_miss_reason, record.cache_missed_tokens,
                ),
            )  # fmt: skip
        return int(cursor.lastrowid or 0)

    def requests(self, corpus: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = "SELECT * FROM requests"
        params: list[Any] = []
        if corpus is not None:
            query += " WHERE corpus = ?"
            params.append(corpus)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            cursor = self._db.execute(query, params)
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def totals(self, corpus: str | None = None, since: float | None = None) -> Totals:
        where, params = _where(corpus, since)
        with self._lock:
            row = self._db.execute(
                f"""SELECT COUNT(*), COALESCE(SUM(outcome != 'ok'), 0),
                    COALESCE(SUM(input_tokens), 0), COALESCE(SUM(cache_read_tokens), 0),
                    COALESCE(SUM(cache_write_5m_tokens + cache_write_1h_tokens), 0),
                    COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0),
                    COALESCE(SUM(uncached_cost_usd), 0)
                    FROM requests {where}""",
                params,
            ).fetchone()
        return Totals(*row)

    def history(self, corpus: str | None = None) -> list[dict[str, Any]]:
        """Every request, oldest first."""
        where, params = _where(corpus, None)
        return self._rows(f"SELECT * FROM requests {where} ORDER BY at, id", params)

    def requests_by_kind(
        self, corpus: str | None = None, since: float | None = None
    ) -> dict[str, tuple[int, int]]:
        """kind -> (requests, of which errors)."""
        where, params = _where(corpus, since)
        with self._lock:
            rows = self._db.execute(
                f"SELECT kind, COUNT(*), COALESCE(SUM(outcome != 'ok'), 0) FROM requests {where} "
                "GROUP BY kind ORDER BY kind",
                params,
            ).fetchall()
        return {kind: (count, errors) for kind, count, errors in rows}

    def last_by_shard(
        self, corpus: str | None = None, *, touched_cache: bool = False
    ) -> list[dict[str, Any]]:
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

    def _rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(query, params)
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _where(corpus: str | None, since: float | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if corpus is not None:
        clauses.append("corpus = ?")
        params.append(corpus)
    if since is not None:
        clauses.append("at >= ?")
        params.append(since)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params
