"""What the offline emulator counts and spends is kept apart from the real API's."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.accounting.ledger import Ledger, RequestRecord
from corpus_cache.accounting.report_html import render_report
from corpus_cache.accounting.stats import collect_stats, render_stats
from corpus_cache.accounting.storage import (
    M001_INITIAL,
    M002_SHARD_AND_TTL,
    M003_CACHE_MISS_REASON,
    M004_ROW_KEY,
)
from corpus_cache.api.tokens import content_key
from corpus_cache.models.pricing import Usage
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


def dead_pid() -> int:
    """The id of a process that has ended."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def mixed_ledger(path: Path, now: float) -> Ledger:
    """A question answered by the API, and two by an offline emulator that has stopped: the
    first wrote its cache, the second read it."""
    ledger = Ledger(path)
    write = Usage(input_tokens=20, cache_write_5m_tokens=10_000, output_tokens=100)
    read = Usage(input_tokens=20, cache_read_tokens=10_000, output_tokens=100)
    ledger.record(RequestRecord("ask", "/c", "claude-sonnet-5-5", "anthropic", "ok", read,
                                cost_usd=0.01, uncached_cost_usd=0.03, at=now - 60, shard=0,
                                ttl="5m"))  # fmt: skip
    gone = dead_pid()
    for usage, cost in ((write, 0.0375), (write, 0.0375)):
        ledger.record(RequestRecord("ask", "/c", "claude-sonnet-5-5", "offline-emulator", "ok",
                                    usage, cost_usd=cost, uncached_cost_usd=0.03, at=now - 30,
                                    shard=1, ttl="5m", emulator_pid=gone))  # fmt: skip
    return ledger


def test_stats_show_each_backend_apart_and_explain_a_negative_saving(tmp_path: Path) -> None:
    now = time.time()
    ledger = mixed_ledger(tmp_path / "l.db", now)
    stats = collect_stats(ledger, "/c", now)
    ledger.close()
    figures = stats.as_dict()
    assert list(figures["backends"]) == ["anthropic", "offline-emulator"]
    billed = figures["backends"]["anthropic"]["periods"]["all time"]
    offline = figures["backends"]["offline-emulator"]["periods"]["all time"]
    assert (billed["requests"], billed["spent_usd"]) == (1, 0.01)
    assert (offline["requests"], offline["spent_usd"]) == (2, 0.075)
    assert figures["backends"]["offline-emulator"]["billed"] is False
    text = render_stats(stats)
    assert "Claude API (billed):" in text
    assert "Offline emulator (not billed" in text
    assert "-$0.0150" in text  # the offline loss, in its own table ...
    assert "Saved is negative: each cache write costs more" in text  # ... and why
    # The emulator that held shard 1's cache has stopped: it is not "warm until".
    shard = {s["shard"]: s for s in figures["shards"]}[1]
    assert shard["warm"] is False
    assert shard["emulator_stopped"] is True
    assert "gone: the emulator that held it has stopped" in text


def test_the_report_draws_each_backend_apart_and_shades_a_loss_red(tmp_path: Path) -> None:
    now = time.time()
    ledger = mixed_ledger(tmp_path / "l.db", now)
    page = render_report(ledger.history("/c"), collect_stats(ledger, "/c", now))
    ledger.close()
    billed = re.search(r'<svg [^>]*data-chart="cumulative-spend".*?</svg>', page, re.S)
    offline = re.search(r'<svg [^>]*data-chart="offline-cumulative-spend".*?</svg>', page, re.S)
    assert billed is not None
    assert offline is not None
    assert 'data-series="lost"' in offline.group(0)  # spent above uncached: red, "Lost"
    assert ">Lost<" in offline.group(0)
    assert 'data-series="lost"' not in billed.group(0)
    assert "Cost more than uncached" in page
    assert "Offline emulator (not billed" in page
