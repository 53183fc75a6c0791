"""The `corpus-cache` command, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.commands import free_port, run, stderr_until
from support.corpus_fixture import FACTS, write_corpus
from support.emulator_control import Control


def test_the_emulator_command_serves_the_messages_api(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "corpus_cache", "emulator", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        client = anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{port}", api_key="k", max_retries=5
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                models = [m.id for m in client.models.list()]
                break
            except anthropic.APIConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert "claude-sonnet-5-5" in models
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_emulator_command_applies_a_tier_and_realistic_latency(tmp_path: Path) -> None:
    port = free_port()
    command = ["emulator", "--port", str(port), "--tier", "1", "--latency", "realistic"]
    process = subprocess.Popen(
        [sys.executable, "-m", "corpus_cache", *command, "--time-scale", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        control = Control(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while True:
            try:
                limits = control.http.get("/_emulator/limits").json()
                break
            except httpx2.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        latency = control.http.get("/_emulator/latency").json()
        control.http.close()
        assert limits["tier"] == "1"
        assert limits["models"]["sonnet-4"]["itpm"] == 30_000
        assert (latency["mode"], latency["time_scale"]) == ("realistic", 100)
        assert limits["time_scale"] == 100
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert (
        b"rate limits of tier 1 refilling 100 times as fast, realistic latency divided by 100"
        in stderr
    )


def test_the_emulator_names_the_tiers_it_knows_when_given_another(tmp_path: Path) -> None:
    result = run(["emulator", "--tier", "9"], tmp_path)
    assert result.returncode == 2
    assert "unknown tier '9'; the limits table has tiers 1, 2, 3, 4" in result.stderr


def test_the_emulator_refuses_a_public_address_unless_told(tmp_path: Path) -> None:
    result = run(["emulator", "--host", "0.0.0.0"], tmp_path)
    assert result.returncode == 2
    assert "loopback" in result.stderr


def test_ask_prints_a_cited_answer_and_stats_sees_it(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    asked = run(["ask", "--corpus", str(corpus), "--json", "Which port does Kestrel use?"], state)
    assert asked.returncode == 0, asked.stderr
    result = json.loads(asked.stdout)
    assert result["backend"] == "offline-emulator"
    assert any(c["path"] == "architecture/routing.md" for c in result["citations"])

    stats = run(["stats", "--json"], state)
    figures = json.loads(stats.stdout)
    assert list(figures["backends"]) == ["offline-emulator"]  # never added to billed spend
    offline = figures["backends"]["offline-emulator"]
    assert offline["billed"] is False
    assert offline["periods"]["all time"]["requests"] == 1
    assert offline["periods"]["all time"]["by_kind"]["ask"] == 1
    (shard,) = figures["shards"]
    assert shard["tokens"] > 0

    page = tmp_path / "report.html"
    report = run(["report", "--html", str(page)], state)
    assert report.returncode == 0, report.stderr
    assert 'data-chart="offline-cumulative-spend"' in page.read_text()
    assert 'data-chart="cumulative-spend"' not in page.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ask", "--corpus", "/nonexistent/folder", "q"], "corpus folder not found"),
        (["ask", "--corpus", ".", "--model", "claude-imaginary-1", "q"], "unknown model"),
    ],
)
def test_bad_input_is_explained_without_a_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run(args, tmp_path / "state")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_demo_asks_twice_and_reports_the_savings(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    result = run(["demo", "--corpus", str(corpus)], tmp_path / "state", timeout=120)
    assert result.returncode == 0, result.stderr
    tools = "Tools: ask, search, list_documents, read_document, cache_status, refresh"
    assert tools in result.stdout
    assert "Cache statistics" in result.stdout
    assert "hit rate:" in result.stdout
    second = result.stdout.split("Q2:")[1]
    written, read = re.search(r"([\d,]+) tokens written to cache.*?([\d,]+) read", second).groups()
    # Read from the cache; written: at most the marker that holds it for an hour.
    assert int(written.replace(",", "")) < 10
    assert int(read.replace(",", "")) > 1_000


def test_a_refused_api_key_is_explained(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    emulator.fault(count=50, status=401, error_type="authentication_error", path="/v1/messages*")
    env = {"ANTHROPIC_API_KEY": "sk-wrong", "ANTHROPIC_BASE_URL": running_emulator.base_url}
    result = run(["ask", "--corpus", str(corpus), "q?"], tmp_path / "state", env_extra=env)
    assert result.returncode == 2
    assert "refused the API key" in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_shows_blocks_and_the_cost_of_a_question(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    result = run(["plan", "--corpus", str(corpus), "--json"], tmp_path / "state")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (shard,) = report["shards"]
    documents = [d["path"] for b in shard["blocks"] for d in b["documents"]]
    assert sorted(documents) == sorted(
        p.relative_to(corpus).as_posix() for p in corpus.rglob("*.md")
    )
    cost = shard["question_cost_usd"]
    assert cost["warm"] < cost["uncached"] < cost["cold"]
    table = run(["plan", "--corpus", str(corpus)], tmp_path / "state")
    assert "one question:" in table.stdout
    assert "cold" in table.stdout


def test_plan_at_a_tier_says_in_how_many_slices_and_how_long_the_cache_is_written(
    tmp_path: Path,
) -> None:
    handbook = Path(__file__).parents[1] / "corpora" / "handbook"  # 72k tokens
    result = run(["plan", "--corpus", str(handbook), "--tier", "1", "--json"], tmp_path / "state")
    assert result.returncode == 0, result.stderr
    (shard,) = json.loads(result.stdout)["shards"]
    build = shard["build"]
    assert build["input_tokens_per_minute"] == 30_000
    assert build["slices"] >= 3
    assert build["slice_tokens"] < 30_000
    assert 60 <= build["seconds"] <= 180  # a minute of the bucket per slice, the first free
    table = run(["plan", "--corpus", str(handbook), "--tier", "1"], tmp_path / "state")
    assert f"the cache is written in {build['slices']} slices" in table.stdout
    untiered = run(["plan", "--corpus", str(handbook), "--json"], tmp_path / "state")
    assert json.loads(untiered.stdout)["shards"][0]["build"] is None


def test_plan_and_report_on_an_empty_folder_say_so_without_a_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    state = tmp_path / "state"
    planned = run(["plan", "--corpus", str(empty)], state)
    assert planned.returncode == 0, planned.stderr
    assert "Traceback" not in planned.stderr
    assert "0 documents" in planned.stdout
    assert "no document to send" in planned.stdout
    page = tmp_path / "report.html"
    reported = run(["report", "--html", str(page), "--corpus", str(empty)], state)
    assert reported.returncode == 0, reported.stderr
    assert "Traceback" not in reported.stderr
    assert "Current layout" in page.read_text()


def test_plan_lists_what_it_left_out_and_promises_no_cache_for_a_small_folder(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "notes.md").write_text("# Notes\n\nThe deploy freeze starts on Friday.\n")
    (folder / ".env").write_text("TOKEN=abc\n")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    result = run(["plan", "--corpus", str(folder)], tmp_path / "state")
    assert result.returncode == 0, result.stderr
    assert "1 document," in result.stdout  # not "1 documents"
    assert "Left out: 2 files" in result.stdout
    assert ".env: secret file" in result.stdout
    assert "image.png:" in result.stdout
    assert "cold (writes the cache)" not in result.stdout
    assert "too small to cache" in result.stdout


def test_serve_on_a_missing_folder_says_so_before_starting_the_emulator(tmp_path: Path) -> None:
    result = run(["serve", "--corpus", str(tmp_path / "nowhere")], tmp_path / "state")
    assert result.returncode == 2
    assert "corpus folder not found" in result.stderr
    assert "emulator" not in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_started_by_hand_in_a_terminal_says_it_waits_for_an_mcp_client(
    tmp_path: Path,
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    terminal, keyboard = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["CORPUS_CACHE_STATE_DIR"] = str(tmp_path / "state")
    process = subprocess.Popen(
        [sys.executable, "-m", "corpus_cache", "serve", "--corpus", str(corpus), "--no-watch"],
        stdin=keyboard,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    os.close(keyboard)
    try:
        seen = stderr_until(process, "waiting for an MCP client on stdin")
        assert any("waiting for an MCP client on stdin" in line for line in seen), seen
    finally:
        process.terminate()
        process.wait(timeout=10)
        os.close(terminal)


def test_offline_asks_in_a_row_share_one_cache_and_stats_show_a_saving(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", filler_sentences=40)
    state = tmp_path / "state"
    first = run(["ask", "--corpus", str(corpus), "When are deploys frozen?"], state)
    second = run(["ask", "--corpus", str(corpus), "--json", "Which port does Kestrel use?"], state)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "This question wrote the cache:" in first.stdout  # why it cost more, once
    assert "kept running between asks" in first.stderr
    assert json.loads(second.stdout)["usage"]["cache_read_tokens"] > 1_000
    stats = json.loads(run(["stats", "--json"], state).stdout)
    offline = stats["backends"]["offline-emulator"]["periods"]["all time"]
    assert offline["saved_usd"] > 0
    (shard,) = stats["shards"]
    assert shard["warm"] is True  # the emulator holding it still runs


def test_the_demo_asks_the_questions_it_is_given(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    asked = ["Which port does Kestrel use?", "When are deploys frozen?", "Who is on call?"]
    args = ["demo", "--corpus", str(corpus)]
    for question in asked:
        args += ["--question", question]
    result = run(args, tmp_path / "state", timeout=120)
    assert result.returncode == 0, result.stderr
    for number, question in enumerate(asked, start=1):
        assert f"Q{number}: {question}" in result.stdout
    assert "Q4:" not in result.stdout
    assert "This question wrote the cache:" in result.stdout.split("Q2:")[0]


def test_the_demo_on_a_folder_of_ones_own_asks_about_its_documents_not_the_handbook(
    tmp_path: Path,
) -> None:
    from corpus_cache.cli.demo import QUESTIONS

    corpus = write_corpus(tmp_path / "corpus")
    result = run(["demo", "--corpus", str(corpus)], tmp_path / "state", timeout=120)
    assert result.returncode == 0, result.stderr
    assert not any(question in result.stdout for question in QUESTIONS)
    asked = re.findall(r"^Q\d+: (.*)$", result.stdout, re.M)
    assert len(asked) == 2
    assert all(any(path in q for path in FACTS) for q in asked), asked


def test_questions_for_a_folder_of_ones_own_come_from_its_documents() -> None:
    from corpus_cache.cli.demo import questions_from

    documents = [
        ("guide/deploys.md", "# Deploys\n\nIntro.\n\n## Friday freezes\n\nNo deploys.\n"),
        ("notes.txt", "Plain notes with no heading at all.\n"),
        ("third.md", "# Never asked\n"),
    ]
    assert questions_from(documents) == (
        "What does guide/deploys.md say about Friday freezes?",
        "What is notes.txt about?",
    )


@given(st.lists(st.tuples(st.from_regex(r"[a-z]{1,8}\.md", fullmatch=True), st.text()),
                max_size=4))  # fmt: skip
def test_drawn_questions_are_one_per_document_and_name_it(
    documents: list[tuple[str, str]],
) -> None:
    from corpus_cache.cli.demo import questions_from

    questions = questions_from(documents)
    assert len(questions) == min(2, len(documents))
    for (path, _), question in zip(documents, questions, strict=False):
        assert path in question
        assert question.endswith("?")


def test_serve_ended_by_sigterm_shuts_down_cleanly_and_gives_the_keepers_lease_up(
    tmp_path: Path,
) -> None:
    # An MCP client that does not wait for the server's exit sends SIGTERM; a clean end
    # records what is being read and frees the lease for another window at once.
    corpus = write_corpus(tmp_path / "corpus")
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["CORPUS_CACHE_STATE_DIR"] = str(state)
    process = subprocess.Popen(
        [sys.executable, "-m", "corpus_cache", "serve", "--corpus", str(corpus), "--no-watch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        seen = stderr_until(process, "keeping the cache for")
        assert any("keeping the cache for" in line for line in seen), seen
        process.send_signal(signal.SIGTERM)  # its input still open, as a client leaves it
        process.wait(timeout=20)
        assert process.stderr is not None
        rest = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, rest
    assert "SIGTERM: shutting down" in rest
    with closing(sqlite3.connect(state / "ledger.sqlite3")) as db:
        assert db.execute("SELECT COUNT(*) FROM keepers").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone() == (0,)
