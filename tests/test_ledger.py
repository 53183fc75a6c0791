"""The ledger: a real SQLite file, migrations, records and totals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from corpus_cache.accounting.ledger import MIGRATIONS, Ledger, RequestRecord
from corpus_cache.models.pricing import Usage


def test_opening_twice_runs_each_migration_once(tmp_path: Path) -> None:
    Ledger(tmp_path / "l.db").close()
    Ledger(tmp_path / "l.db").close()
    with sqlite3.connect(tmp_path / "l.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


def test_token_counts_survive_a_restart_and_are_per_model(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.store_token_counts("model-a", "anthropic", {"k1": 10, "k2": 20})
    ledger.close()
    reopened = Ledger(tmp_path / "l.db")
    assert reopened.token_counts("model-a", "anthropic", ["k1", "k2", "k3"]) == {"k1": 10, "k2": 20}
    assert reopened.token_counts("model-b", "anthropic", ["k1"]) == {}
    assert reopened.token_counts("model-a", "offline-emulator", ["k1"]) == {}


def test_totals_add_up_requests_and_compute_the_hit_rate(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    ledger.record(
        RequestRecord("ask", "/c", "m", "anthropic", "ok",
                      Usage(input_tokens=10, cache_write_5m_tokens=990, output_tokens=5),
                      cost_usd=0.5, uncached_cost_usd=0.4, at=100.0)
    )  # fmt: skip
    ledger.record(
        RequestRecord("ask", "/c", "m", "anthropic", "ok",
                      Usage(input_tokens=10, cache_read_tokens=990, output_tokens=5),
                      cost_usd=0.1, uncached_cost_usd=0.4, at=200.0)
    )  # fmt: skip
    ledger.record(RequestRecord("ask", "/c", "m", "anthropic", "error", error="529", at=300.0))
    ledger.record(RequestRecord("ask", "/other", "m", "anthropic", "ok", cost_usd=9.0, at=300.0))
    totals = ledger.totals("/c")
    assert (totals.requests, totals.errors) == (3, 1)
    assert totals.hit_rate == pytest.approx(990 / 2000)
    assert totals.cost_usd == pytest.approx(0.6)
    assert totals.saved_usd == pytest.approx(0.2)
    assert ledger.totals("/c", since=150.0).requests == 2
    assert ledger.totals().requests == 4
