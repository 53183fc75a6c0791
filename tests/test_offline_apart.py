"""What the offline emulator counts and spends is kept apart from the real API's."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.accounting.storage import (
    M001_INITIAL,
    M002_SHARD_AND_TTL,
    M003_CACHE_MISS_REASON,
    M004_ROW_KEY,
)
from corpus_cache.api.tokens import content_key
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on

pytestmark = pytest.mark.anyio


async def test_counts_are_stored_under_the_backend_that_made_them_and_never_borrowed(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    # The API's count of one document, from an earlier run with a key: not the emulator's.
    ledger = Ledger(state / "ledger.sqlite3")
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "scratch") as probe:
        doc = probe.current.snapshot.documents[0]
    ledger.store_token_counts("claude-sonnet-5-5", "anthropic", {content_key(doc): 99_999})
    ledger.close()
    # The engine's backend is labelled "anthropic", but the emulator answers its counts.
    async with engine_on(corpus, running_emulator.base_url, state) as engine:
        assert engine.counter.backend == "offline-emulator"
        assert engine.current.tokens[doc.path] != 99_999
    with sqlite3.connect(state / "ledger.sqlite3") as db:
        backends = dict(
            db.execute("SELECT backend, COUNT(*) FROM token_counts GROUP BY backend").fetchall()
        )
    assert backends["anthropic"] == 1
    assert backends["offline-emulator"] == len(engine.current.snapshot.documents)


def test_counts_of_an_older_ledger_whose_backend_is_unknown_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        for migration in (M001_INITIAL, M002_SHARD_AND_TTL, M003_CACHE_MISS_REASON, M004_ROW_KEY):
            db.executescript(migration)
        db.execute("PRAGMA user_version=4")
        db.execute("INSERT INTO token_counts VALUES ('k', 'm', 10, 0)")
        db.execute(
            "INSERT INTO requests (at, kind, corpus, model, backend, outcome) "
            "VALUES (1, 'ask', '/c', 'm', 'anthropic', 'ok')"
        )
    ledger = Ledger(path)
    assert ledger.token_counts("m", "anthropic", ["k"]) == {}
    assert ledger.token_counts("m", "offline-emulator", ["k"]) == {}
    assert ledger.totals().requests == 1
    ledger.close()
