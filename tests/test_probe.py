"""`corpus-cache probe` against the emulator, through the real SDK and the command line.

The emulator agrees with the model table unless /_emulator/models says otherwise; the
probe must find each disagreement, and the models file it writes must make the table
agree again (read back with --models-file, as `serve --models-file` reads it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.cli.main import main
from corpus_cache.emulator import RunningEmulator
from support.emulator_control import Control

SONNET = "claude-sonnet-5-5"  # a 512-token minimum: the cheapest probe of the table


@pytest.fixture
def pointed(
    running_emulator: RunningEmulator, emulator: Control, monkeypatch: pytest.MonkeyPatch
) -> Control:
    """The SDK pointed at the test emulator, as a user with a key points it at the API."""
    monkeypatch.setenv("ANTHROPIC_BASE_URL", running_emulator.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    return emulator


def probe(
    capsys: pytest.CaptureFixture[str], *args: str, models_file: Path | None = None
) -> dict[str, Any]:
    before = ["--models-file", str(models_file)] if models_file else []
    assert main([*before, "probe", "--json", *args]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    return {f["step"]: f["verdict"] for f in report["findings"]}


def mismatched(report: dict[str, Any]) -> set[str]:
    return {step for step, verdict in verdicts(report).items() if verdict == "mismatch"}


def test_every_step_matches_the_table_on_the_emulator_with_the_timed_ones_on_its_clock(
    pointed: Control, capsys: pytest.CaptureFixture[str]
) -> None:
    pointed.freeze()
    pointed.limits(tier=2)
    report = probe(capsys, "--model", SONNET, "--wait", "--max-usd", "0.05")

    assert set(verdicts(report).values()) == {"match"}, report["findings"]
    assert {"minimum", "lookback", "1h/5m split", "5m read", "marker upgrade", "5m refresh",
            "1h TTL", "upgrade outlives 5m", "cache read", "cache write 5m", "cache write 1h",
            "count_tokens drift", "rate limits"} <= set(verdicts(report))  # fmt: skip
    limits = next(f for f in report["findings"] if f["step"] == "rate limits")
    assert limits["measured"].startswith("tier 2")
    assert report["overrides"] == {}
    # The timed checks waited on the emulator's clock, not in real time.
    assert pointed.http.get("/_emulator/clock").json()["now"] >= 1_800_000_000 + 14 * 60


@pytest.mark.parametrize(
    ("setting", "step", "field"),
    [
        ({"min_cacheable_tokens": 1024}, "minimum", "min_cacheable_tokens"),
        ({"cache_read_multiplier": 0.1}, "cache read", "cache_read_multiplier"),
        ({"cache_lookback": 10}, "lookback", "cache_lookback"),
        ({"cache_write_1h_multiplier": 2.5}, "cache write 1h", "cache_write_1h_multiplier"),
        ({"cache_write_5m_multiplier": 1.5}, "cache write 5m", "cache_write_5m_multiplier"),
    ],
    ids=["minimum", "read-multiplier", "lookback", "1h-write", "5m-write"],
)
def test_a_disagreeing_emulator_is_found_and_the_written_overrides_correct_the_table(
    pointed: Control,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    setting: dict[str, Any],
    step: str,
    field: str,
) -> None:
    pointed.post("models", {SONNET: setting})
    overrides = tmp_path / "measured.toml"
    found = probe(capsys, "--model", SONNET, "--write-overrides", str(overrides))

    assert mismatched(found) == {step}, found["findings"]
    assert set(found["overrides"]) == {field}
    pointed.post("reset")  # nothing the first run cached helps the second
    pointed.post("models", {SONNET: setting})
    again = probe(capsys, "--model", SONNET, models_file=overrides)
    assert mismatched(again) == set(), again["findings"]
    assert verdicts(again)[step] == "match"


def test_a_count_tokens_drift_is_reported_and_written_nowhere(
    pointed: Control, capsys: pytest.CaptureFixture[str]
) -> None:
    pointed.post("models", {SONNET: {"count_tokens_extra": 60}})
    report = probe(capsys, "--model", SONNET)

    assert "count_tokens drift" in mismatched(report)
    drift = next(f for f in report["findings"] if f["step"] == "count_tokens drift")
    assert "counted" in drift["measured"]
    assert "+" in drift["measured"]
    assert report["overrides"] == {}  # the table has no such figure


def test_the_overrides_file_is_a_models_file_naming_what_was_measured(
    pointed: Control, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from corpus_cache.models.catalog import load_catalog

    pointed.post("models", {SONNET: {"min_cacheable_tokens": 1024, "cache_lookback": 12}})
    overrides = tmp_path / "measured.toml"
    probe(capsys, "--model", SONNET, "--write-overrides", str(overrides))

    spec = load_catalog(overrides).get(SONNET)
    assert 1024 <= spec.min_cacheable_tokens <= 1024 * 1.02  # within a sentence of filler
    assert spec.cache_lookback == 12
    assert spec.cache_read_multiplier == 0.05  # what matched is left to the table


def test_no_request_is_sent_that_could_cross_max_usd_and_the_rest_is_reported_skipped(
    pointed: Control, capsys: pytest.CaptureFixture[str]
) -> None:
    report = probe(capsys, "--model", "claude-haiku-4-5", "--max-usd", "0.012")

    billed = sum(e["billed"]["usd"] for e in pointed.log() if "billed" in e)
    assert billed <= 0.012
    assert report["spent_usd"] == pytest.approx(billed, abs=1e-6)
    assert "skipped" in set(verdicts(report).values())
    reasons = [f["detail"] for f in report["findings"] if f["verdict"] == "skipped"]
    assert any("--max-usd" in reason for reason in reasons)


def test_every_request_the_probe_makes_is_in_the_ledger_as_a_probe_row(
    pointed: Control, capsys: pytest.CaptureFixture[str]
) -> None:
    probe(capsys, "--model", SONNET)

    billed = {e["id"]: e["billed"]["usd"] for e in pointed.log() if "billed" in e}
    ledger = Ledger(Path(os.environ["CORPUS_CACHE_STATE_DIR"]) / "ledger.sqlite3")
    try:
        rows = ledger.history("probe")
    finally:
        ledger.close()
    assert {r.message_id for r in rows} == set(billed)
    assert {r.kind for r in rows} == {"probe"}
    assert sum(r.cost_usd for r in rows) == pytest.approx(sum(billed.values()))


def test_without_a_key_the_probe_runs_against_an_emulator_of_its_own_and_its_clock(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = probe(capsys, "--model", SONNET, "--wait")
    assert "(emulator)" in report["backend"]
    # Its controls answer with its own key: the timed steps ran on its clock.
    assert set(verdicts(report).values()) == {"match", "skipped"}
    assert verdicts(report)["1h TTL"] == "match"


def test_the_text_report_says_what_matched_what_did_not_and_what_was_skipped(
    pointed: Control, capsys: pytest.CaptureFixture[str]
) -> None:
    pointed.post("models", {SONNET: {"cache_lookback": 15}})
    assert main(["probe", "--model", SONNET]) == 0
    text = capsys.readouterr().out
    assert "mismatch lookback" in text
    assert "needs --wait" in text
    assert "--write-overrides" in text


def test_a_request_the_api_refuses_ends_the_probe_with_what_it_found_and_an_error_status(
    pointed: Control, capsys: pytest.CaptureFixture[str]
) -> None:
    pointed.fault(count=1, status=401, error_type="authentication_error")
    assert main(["probe", "--model", SONNET, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)

    stopped = report["findings"][-1]
    assert stopped["step"] == "(stopped)"
    assert "API key" in stopped["detail"]
    ledger = Ledger(Path(os.environ["CORPUS_CACHE_STATE_DIR"]) / "ledger.sqlite3")
    try:
        rows = ledger.history("probe")
    finally:
        ledger.close()
    assert [(r.kind, r.outcome) for r in rows] == [("probe", "error")]  # the attempt, recorded
