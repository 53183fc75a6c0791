"""Many questions at once while the folder changes under them: each answer comes from one
whole snapshot, and no cache prefix is written twice.

The emulator holds every response back a little before it begins (a delay fault), as the
real API does before its first token: that is the window in which a second request for a
prefix still being written would pay for writing it again."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from corpus_cache.api.request import build_request
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.emulator import RunningEmulator
from corpus_cache.emulator.prompt import parse_messages_request
from corpus_cache.engine.core import Engine
from corpus_cache.models.catalog import load_catalog
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.live_folder import watched
from support.mcp_session import serving

pytestmark = pytest.mark.anyio

ASKS = 50
WAVES = 5  # questions start in waves, each on a newer snapshot than the one before
EDITED = ("deploys.md", "oncall.md")  # rewritten together each round
TTFT = 0.03  # seconds each response is held back before it begins
# `make reliability` repeats the whole scenario.
ROUNDS = int(os.environ.get("CORPUS_CACHE_CONSISTENCY_ROUNDS", "1"))


def stamp(path: Path, revision: int) -> None:
    lines = path.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("The revision stamp is")]
    path.write_text("\n".join([*kept, f"The revision stamp is r{revision}.", ""]))


def documents_sent(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (block["title"], block["source"]["data"])
        for block in body["messages"][0]["content"]
        if block.get("type") == "document"
    ]


def rendering(corpus: Corpus) -> list[tuple[str, str]]:
    """The documents a request on this corpus's (only) shard carries, in order."""
    plan = corpus.shards[0].plan
    params = build_request(plan, corpus.snapshot, "?", model="m", max_tokens=1)
    return documents_sent(params)


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_fifty_questions_racing_edits_are_each_answered_from_one_whole_snapshot(
    tmp_path: Path,
    running_emulator: RunningEmulator,
    emulator: Control,
    monkeypatch: pytest.MonkeyPatch,
    round_: int,
) -> None:
    monkeypatch.setattr(running_emulator.service.log, "bodies_kept", 1000)
    corpus = write_corpus(tmp_path / "corpus")
    for name in EDITED:
        stamp(corpus / name, 0)
    emulator.fault(kind="delay", delay=TTFT, count=10 * ASKS, path="/v1/messages")

    async with serving(corpus, running_emulator.base_url, tmp_path / "state") as (mcp, engine):
        seen: dict[int, Corpus] = {engine.current.snapshot.version: engine.current}

        async def keep(old: Corpus | None, new: Corpus) -> None:
            seen[new.snapshot.version] = new

        engine.on_swap(keep)
        answers = await ask_while_editing(mcp, engine, corpus, seen)
        rows = engine.ledger.requests(engine.corpus_key, limit=10 * ASKS)

    by_id = {e["id"]: e for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"}
    assert len(by_id) == ASKS, "one request per question: a single shard, no retries"
    used = Counter(a["snapshot_version"] for a in answers)
    assert len(used) >= 2, f"the questions should span the edits, they used {dict(used)}"

    for answer in answers:
        version = answer["snapshot_version"]
        (message_id,) = answer["message_ids"]
        sent = documents_sent(by_id[message_id]["body"])
        matching = [v for v, c in seen.items() if rendering(c) == sent]
        assert version in matching, (
            f"{message_id} was sent documents of v{matching}, not v{version}"
        )
        texts = dict(sent)
        for citation in answer["citations"]:
            assert citation["quote"].strip() in texts[citation["path"]]

    recorded = {r.message_id: r.snapshot for r in rows if r.kind == "ask"}
    assert recorded == {m: a["snapshot_version"] for a in answers for m in a["message_ids"]}

    assert_no_prefix_written_twice(list(by_id.values()))


async def ask_while_editing(
    mcp: Client, engine: Engine, corpus: Path, seen: dict[int, Corpus]
) -> list[dict[str, Any]]:
    """Fire `ASKS` questions in `WAVES`, a new wave after each edit is live, while the
    watcher and explicit refreshes race each other; stop editing once all are answered."""
    answers: list[dict[str, Any]] = []
    swapped = anyio.Event()
    done = anyio.Event()

    async def on_swap(old: Corpus | None, new: Corpus) -> None:
        nonlocal swapped
        swapped.set()
        swapped = anyio.Event()

    engine.on_swap(on_swap)

    async def edit() -> None:
        revision = 0
        while not done.is_set():
            revision += 1
            for name in EDITED:
                stamp(corpus / name, revision)
            await mcp.call_tool("refresh", {})

    async def ask(number: int, wave: int) -> None:
        while len(seen) <= wave:
            await swapped.wait()
        result = await mcp.call_tool(
            "ask", {"question": f"What is the revision stamp? (question {number})"}
        )
        assert not result.is_error, result.content
        assert result.structured_content is not None
        answers.append(result.structured_content)
        if len(answers) == ASKS:
            done.set()

    with anyio.fail_after(30):
        async with watched(engine, debounce=0.01), anyio.create_task_group() as group:
            group.start_soon(edit)
            for number in range(ASKS):
                group.start_soon(ask, number, number % WAVES)
    return answers


def assert_no_prefix_written_twice(entries: list[dict[str, Any]]) -> None:
    """Every prefix a response billed as a cache write, by the emulator's own prefix hash,
    is written once: the TTLs outlast the test, so a second write means two requests both
    paid to write an entry that one of them could have read."""
    catalog = load_catalog()
    written: Counter[str] = Counter()
    for entry in entries:
        positions = parse_messages_request(entry["body"], catalog).prompt.positions
        for position in entry["written_positions"]:
            written[positions[position].prefix_hash] += 1
    twice = {h[:12]: n for h, n in written.items() if n > 1}
    assert not twice, f"prefixes written more than once: {twice}"
    assert written, "the edits should have made the questions write new prefixes"
