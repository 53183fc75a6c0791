"""Accounting: the m003 migration, `stats` figures, the HTML report, and the cache miss
reason the engine records from the API's diagnostics."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.accounting.ledger import (
    M001_INITIAL,
    M002_SHARD_AND_TTL,
    MIGRATIONS,
    Ledger,
    RequestRecord,
)
from corpus_cache.accounting.report_html import render_report
from corpus_cache.accounting.stats import collect_stats, render_stats
from corpus_cache.models.pricing import Usage
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on

NOON = datetime(2026, 11, 20, 12, 0).astimezone().timestamp()  # local noon: "today" is safe
DAY = 86_400.0


def record(ledger: Ledger, at: float, kind: str = "ask", **fields: Any) -> None:
    ledger.record(RequestRecord(kind, "/c", "claude-sonnet-5-5", "anthropic", at=at, **fields))


def filled_ledger(path: Path) -> Ledger:
    """Ten days of requests on two shards, with a warm, an error and a diagnosed miss."""
    ledger = Ledger(path)
    write = Usage(input_tokens=20, cache_write_5m_tokens=1000, output_tokens=100)
    read = Usage(input_tokens=20, cache_read_tokens=1000, output_tokens=100)
    record(
        ledger,
        NOON - 10 * DAY,
        outcome="ok",
        usage=write,
        cost_usd=0.50,
        uncached_cost_usd=0.40,
        shard=0,
        ttl="5m",
        latency_ms=1000.0,
    )
    record(
        ledger,
        NOON - 3 * DAY,
        outcome="ok",
        usage=read,
        cost_usd=0.10,
        uncached_cost_usd=0.40,
        shard=0,
        ttl="5m",
        latency_ms=1000.0,
    )
    record(
        ledger,
        NOON - 600,
        kind="warm",
        outcome="ok",
        usage=write,
        cost_usd=0.30,
        uncached_cost_usd=0.40,
        shard=1,
        ttl="1h",
        latency_ms=2000.0,
        cache_miss_reason="messages_changed",
        cache_missed_tokens=800,
    )
    record(
        ledger,
        NOON - 300,
        outcome="ok",
        usage=read,
        cost_usd=0.05,
        uncached_cost_usd=0.40,
        shard=1,
        ttl="1h",
        latency_ms=500.0,
    )
    record(ledger, NOON - 200, outcome="error", error="529 overloaded", shard=1)
    record(
        ledger,
        NOON - 100,
        outcome="ok",
        usage=Usage(input_tokens=300, output_tokens=10),
        cost_usd=0.01,
        uncached_cost_usd=0.01,
        shard=2,
        ttl=None,
    )
    record(ledger, NOON - 50, outcome="ok", cost_usd=9.0, uncached_cost_usd=9.0, shard=0,
           ttl="5m")  # fmt: skip
    ledger.record(RequestRecord("ask", "/other", "m", "anthropic", "ok", at=NOON, shard=0))
    return ledger


def test_m003_adds_the_cache_miss_columns_to_an_existing_v2_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(M001_INITIAL + M002_SHARD_AND_TTL + "PRAGMA user_version=2;")
        db.execute(
            "INSERT INTO requests (at, kind, corpus, model, backend, outcome, shard, ttl, "
            "cost_usd) VALUES (1.0, 'ask', '/c', 'm', 'anthropic', 'ok', 0, '5m', 0.25)"
        )
    ledger = Ledger(path)
    record(ledger, 2.0, outcome="ok", cache_miss_reason="system_changed", cache_missed_tokens=7)
    old, new = ledger.history("/c")
    ledger.close()
    assert (old.cost_usd, old.cache_miss_reason, old.cache_missed_tokens) == (
        0.25, None, None,
    )  # fmt: skip
    assert (new.cache_miss_reason, new.cache_missed_tokens) == ("system_changed", 7)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),) == (11,)


def test_m007_says_which_rows_of_an_existing_ledger_were_billed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        for migration in MIGRATIONS[:6]:
            db.executescript(migration)
        db.execute("PRAGMA user_version=6")
        insert = (
            "INSERT INTO requests (at, kind, corpus, model, backend, outcome, cost_usd, error) "
            "VALUES (?, 'ask', '/c', 'm', 'anthropic', ?, ?, ?)"
        )
        for at, (outcome, cost, error) in enumerate([
            ("ok", 0.5, None),
            ("error", 0.2, "stream broke; the response had begun"),
            ("error", 0.0, "timed out; the API may bill a request it had begun to process"),
            ("error", 0.0, "the Anthropic API answered 400"),
            ("refused", 0.0, "refused by the daily cap"),
        ]):  # fmt: skip
            db.execute(insert, (float(at), outcome, cost, error))
    ledger = Ledger(path)
    billing = [row.billing for row in ledger.history("/c")]
    totals = ledger.totals("/c")
    ledger.close()
    assert billing == ["billed", "billed", "maybe", "unbilled", "unbilled"]
    assert totals.maybe_requests == 1
    assert totals.maybe_usd == 0  # no estimate was made for it then


def test_stats_show_what_may_have_been_billed_apart_from_what_was(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    record(ledger, NOON - 60, outcome="ok", cost_usd=0.25, uncached_cost_usd=0.3, shard=0)
    record(ledger, NOON - 30, outcome="error", billing="maybe", estimate_usd=0.125, shard=0,
           error="no response began")  # fmt: skip
    stats = collect_stats(ledger, "/c", NOON)
    html = render_report(ledger.history("/c"), stats)
    ledger.close()
    today = stats.as_dict()["backends"]["anthropic"]["periods"]["today"]
    assert today["spent_usd"] == 0.25  # the estimate is not in what was spent
    assert (today["maybe_billed_requests"], today["maybe_billed_usd"]) == (1, 0.125)
    text = render_stats(stats)
    assert "may have been billed (today): 1 request(s), about $0.1250, not in spent" in text
    assert "May have been billed: requests sent whose response never began" in text
    assert "May have been billed" in html
    assert "about $0.125" in html


def test_stats_figures_are_the_sums_of_the_ledger_rows(tmp_path: Path) -> None:
    ledger = filled_ledger(tmp_path / "l.db")
    stats = collect_stats(ledger, "/c", NOON).as_dict()
    ledger.close()
    periods = stats["backends"]["anthropic"]["periods"]
    today, week, ever = (periods[p] for p in ("today", "7 days", "all time"))

    assert ever["requests"] == 7
    assert ever["errors"] == 1
    assert ever["by_kind"] == {"ask": 6, "warm": 1, "keep-warm": 0}
    assert ever["spent_usd"] == pytest.approx(0.50 + 0.10 + 0.30 + 0.05 + 0.01 + 9.0)
    assert ever["uncached_usd"] == pytest.approx(0.40 * 4 + 0.01 + 9.0)
    assert ever["saved_usd"] == pytest.approx(1.61 + 9.0 - 9.96)
    # read 2,000 of 4 x 1,020 + 300 prompt tokens
    assert ever["hit_rate"] == pytest.approx(round(2000 / 4380, 4))

    assert week["requests"] == 6
    assert week["spent_usd"] == pytest.approx(0.10 + 0.30 + 0.05 + 0.01 + 9.0)
    assert today["requests"] == 5
    assert today["by_kind"] == {"ask": 4, "warm": 1, "keep-warm": 0}
    assert today["spent_usd"] == pytest.approx(0.30 + 0.05 + 0.01 + 9.0)
    assert today["uncached_usd"] == pytest.approx(0.40 + 0.40 + 0.01 + 9.0)
    assert today["hit_rate"] == pytest.approx(round(1000 / 2340, 4))

    shards = {s["shard"]: s for s in stats["shards"]}
    # shard 0: its last request read and wrote nothing; the one before read, 3 days ago
    assert (shards[0]["tokens"], shards[0]["ttl"], shards[0]["warm"]) == (0, "5m", False)
    assert shards[0]["warm_until"] is not None
    # shard 1: the error is not its last request; the read 300 s ago started 0.5 s earlier
    assert (shards[1]["tokens"], shards[1]["ttl"], shards[1]["warm"]) == (1020, "1h", True)
    started = NOON - 300 - 0.5
    assert shards[1]["warm_until"] == datetime.fromtimestamp(started + 3600).astimezone().isoformat(
        timespec="seconds"
    )
    # shard 2: never cached
    assert (shards[2]["tokens"], shards[2]["ttl"], shards[2]["warm_until"]) == (300, None, None)


def test_the_stats_table_shows_every_period_and_shard(tmp_path: Path) -> None:
    ledger = filled_ledger(tmp_path / "l.db")
    text = render_stats(collect_stats(ledger, None, NOON))
    ledger.close()
    for word in ("today", "7 days", "all time", "warm", "keep-warm", "errors", "never cached"):
        assert word in text
    assert "cold (since" in text
    assert "/other" in text  # several corpora: the shard lines say which


def svg(page: str, chart: str) -> str:
    found = re.search(rf'<svg [^>]*data-chart="{chart}".*?</svg>', page, re.S)
    assert found, f"no {chart} chart"
    return found.group(0)


def test_the_html_report_draws_its_charts_from_a_real_ledger(tmp_path: Path) -> None:
    ledger = filled_ledger(tmp_path / "l.db")
    layout = {
        "documents": 3, "corpus_tokens": 1500, "model": "claude-sonnet-5-5",
        "min_cacheable_tokens": 512,
        "shards": [{"shard": 0, "blocks": [
            {"block": 1, "documents": [{"path": "a.md", "tokens": 1000}], "tokens": 1000,
             "prefix_tokens": 1100, "ttl": "5m"},
            {"block": 2, "documents": [{"path": "b.md", "tokens": 500}], "tokens": 500,
             "prefix_tokens": 1600, "ttl": None},
        ]}],
    }  # fmt: skip
    page = render_report(ledger.history("/c"), collect_stats(ledger, "/c", NOON), layout)
    ledger.close()

    spend = svg(page, "cumulative-spend")
    assert '<title id="chart-cumulative-spend-title">Cumulative spend vs uncached' in spend
    for series in ("spent", "uncached", "saved"):
        assert f'data-series="{series}"' in spend
    hit_rate = svg(page, "hit-rate")
    assert "Hit rate over time" in hit_rate
    assert hit_rate.count('data-series="hit-rate"') >= 2  # hours with requests
    shards = svg(page, "tokens-per-shard")
    assert all(f">shard {n}<" in shards for n in (0, 1, 2))
    for series in ("cache-read", "cache-write-5m", "uncached-input"):
        assert f'data-series="{series}"' in shards
    kinds = svg(page, "tokens-per-kind")
    assert re.findall(r">(ask|warm|keep-warm)<", kinds) == ["ask", "warm"]
    assert 'data-series="block-2"' in svg(page, "layout")
    assert "<td>messages_changed</td><td class='num'>1</td><td class='num'>800</td>" in page
    assert '<div class="value">$9.960</div>' in page  # spent, all time
    # self-contained: nothing to fetch, nothing to run
    for fetching in ("<script", "<link", "src=", "url("):
        assert fetching not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"] * 5


def test_an_empty_ledger_still_renders_a_page(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    page = render_report([], collect_stats(ledger, None, NOON))
    ledger.close()
    assert "No requests yet." in page
    assert "no requests recorded yet" in page


@pytest.mark.anyio
async def test_the_engine_records_the_cache_miss_reason_of_the_api_diagnostics(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s", watch=False) as e:
        first = e.current.shards[0].plan.order[0]  # in the first block: everything is missed
        await e.ask("When does the on-call rotation hand over?")
        (corpus / first).write_text((corpus / first).read_text() + "\nA new line.\n")
        await e.refresh()
        await e.ask("Which port does Kestrel use?")
        rows = e.ledger.history(e.corpus_key)
    bodies = [
        entry["body"]
        for entry in sorted(emulator.log(bodies=True), key=lambda entry: entry["time"])
        if entry["path"] == "/v1/messages"
    ]
    assert bodies[0]["diagnostics"] == {"previous_message_id": None}
    assert bodies[1]["diagnostics"] == {"previous_message_id": rows[0].message_id}
    assert rows[0].cache_miss_reason is None
    assert rows[1].cache_miss_reason == "messages_changed"
    assert rows[1].cache_missed_tokens > 0
