"""The `refresh` tool, warming the cache, and the first question after an edit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from corpus_cache.engine.core import WARM_QUESTION
from corpus_cache.mcp_surface.server import build_server
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.engines import engine_on
from support.live_folder import Swaps, watched

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def requests_to_messages(emulator: Control) -> list[dict[str, Any]]:
    """The Messages API calls the emulator saw, oldest first, with their bodies."""
    entries = [e for e in emulator.log(bodies=True) if e["path"] == "/v1/messages"]
    return sorted(entries, key=lambda e: e["time"])


def documents_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in body["messages"][0]["content"] if c["type"] == "document"]


async def test_refresh_rescans_now_and_says_what_changed(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with (
        engine_on(corpus, running_emulator.base_url, tmp_path / "s", watch=False) as engine,
        Client(build_server(engine), mode=mode) as mcp,  # type: ignore[arg-type]
    ):
        (corpus / "runbook.md").write_text("Restart the router with `kestrel restart`.\n")
        (corpus / "deploys.md").write_text("Deploys are never frozen any more.\n")
        (corpus / "incidents.md").unlink()
        changed = await mcp.call_tool("refresh", {})
        again = await mcp.call_tool("refresh", {})
    out = changed.structured_content
    assert out is not None
    assert (out["added"], out["removed"], out["changed"]) == (
        ["runbook.md"], ["incidents.md"], ["deploys.md"],
    )  # fmt: skip
    assert out["documents"] == 4
    assert out["warmed"] == []
    text = changed.content[0].text  # type: ignore[union-attr]
    assert "1 added, 1 removed, 1 changed" in text
    assert f"snapshot v{out['snapshot_version']}" in text
    assert "nothing changed" in again.content[0].text  # type: ignore[union-attr]


async def test_refresh_with_warm_writes_the_cache_the_next_question_reads(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with (
        engine_on(corpus, running_emulator.base_url, tmp_path / "s", watch=False) as engine,
        Client(build_server(engine)) as mcp,
    ):
        warmed = await mcp.call_tool("refresh", {"warm": True})
        answer = await mcp.call_tool("ask", {"question": "Which port does Kestrel listen on?"})
        rows = engine.ledger.requests(engine.corpus_key)  # newest first
    shards = warmed.structured_content["warmed"]  # type: ignore[index]
    assert len(shards) == 1
    assert shards[0]["cache_write_tokens"] > 0
    assert "tokens written to the cache" in warmed.content[0].text  # type: ignore[union-attr]

    usage = answer.structured_content["usage"]  # type: ignore[index]
    assert usage["cache_read_tokens"] > 0
    assert usage["cache_write_5m_tokens"] == 0
    assert usage["cache_write_1h_tokens"] < 10  # at most the marker holding it for an hour

    assert [row.kind for row in rows] == ["ask", "warm"]
    warm_row = rows[1]
    assert warm_row.outcome == "ok"
    assert warm_row.cache_write_5m_tokens == shards[0]["cache_write_tokens"]
    assert warm_row.output_tokens == 0
    assert warm_row.cost_usd > 0

    warm_call, ask_call = requests_to_messages(emulator)
    assert warm_call["body"]["max_tokens"] == 0
    assert warm_call["body"]["messages"][0]["content"][-1]["text"] == WARM_QUESTION
    for key in ("model", "system"):
        assert warm_call["body"][key] == ask_call["body"][key]
    assert _content(warm_call["body"]) == _content(ask_call["body"])  # the same prefix


def _content(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents as the cache's prefix hash sees them: breakpoints are not content."""
    return [{k: v for k, v in d.items() if k != "cache_control"} for d in documents_of(body)]


async def test_warming_a_corpus_too_short_to_cache_sends_nothing(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = tmp_path / "tiny"
    corpus.mkdir()
    (corpus / "note.md").write_text("The office opens at eight.\n")
    async with (
        engine_on(
            corpus, running_emulator.base_url, tmp_path / "s", model="claude-haiku-4-5"
        ) as engine,
        Client(build_server(engine)) as mcp,
    ):
        warmed = await mcp.call_tool("refresh", {"warm": True})
    assert warmed.structured_content["warmed"] == []  # type: ignore[index]
    assert "nothing to warm" in warmed.structured_content["warm_note"]  # type: ignore[index]
    assert requests_to_messages(emulator) == []


async def test_after_an_edit_the_next_ask_sends_the_new_text_and_rewrites_only_from_it(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "s") as engine:
        swaps = Swaps(engine)
        first = await engine.ask("When does the on-call rotation hand over?")
        edited = engine.current.shards[0].plan.order[-1]  # in the last cached block
        async with watched(engine):
            path = corpus / edited
            path.write_text(path.read_text() + "\nThe new fact is ZEBRA-42.\n")
            snapshot = await swaps.until(lambda s: "ZEBRA-42" in (s.get(edited) or s).text)
            second = await engine.ask("What is the new fact?")
    assert second.snapshot_version == snapshot.version
    assert "ZEBRA-42" in second.text

    first_call, second_call = requests_to_messages(emulator)
    sent = {d["title"]: d["source"]["data"] for d in documents_of(second_call["body"])}
    assert "ZEBRA-42" in sent[edited]

    # The second request reads the cache up to the last breakpoint the first request had
    # before the edited document, and writes only from there on.
    before = documents_of(first_call["body"])
    position = [d["title"] for d in before].index(edited)
    kept = max(i + 1 for i, d in enumerate(before[:position]) if "cache_control" in d)
    assert second_call["hit_position"] == kept
    assert second.usage.cache_read_tokens > 0
    written = second.usage.cache_write_5m_tokens + second.usage.cache_write_1h_tokens
    assert 0 < written < first.usage.cache_write_5m_tokens + first.usage.cache_write_1h_tokens
