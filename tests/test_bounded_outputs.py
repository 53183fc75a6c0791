"""Every tool result stays well under the clients' output limits (Claude Code cuts at 25k
tokens), however large the corpus: a 5 MB file, a file that is one long line, many files."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult

from corpus_cache.mcp_surface.bounds import (
    MAX_BLOCKS_SHOWN,
    MAX_CITATIONS,
    READ_MAX_CHARS,
    RESULT_MAX_CHARS,
    bound_answer,
    bound_status,
    result_chars,
)
from corpus_cache.mcp_surface.results import (
    AskResult,
    CacheStatus,
    CitationOut,
    render_answer,
    render_status,
    result,
)
from support.corpus_fixture import write_corpus
from support.emulator_control import Control
from support.mcp_session import serving

pytestmark = pytest.mark.anyio

BIG_BYTES = 5 * 1024 * 1024
WORDS = "kestrel routing shipment deploy freeze rotation pager latency invoice ledger".split()


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_corpus(tmp_path_factory.mktemp("big") / "corpus")
    rnd = random.Random(7)
    lines, size = [], 0
    while size < BIG_BYTES:
        line = f"{len(lines) + 1:07d} " + " ".join(rnd.choices(WORDS, k=9)) + "."
        lines.append(line)
        size += len(line) + 1
    (root / "logs").mkdir()
    (root / "logs" / "big.log").write_text("\n".join(lines) + "\n")
    minified = ",".join(f'{{"id":{n},"kestrel":"{rnd.choice(WORDS)}"}}' for n in range(12_000))
    (root / "minified.json").write_text(f"[{minified}]")
    deep = root / ("nested-folder-with-a-long-name/" * 3)
    deep.mkdir(parents=True)
    for n in range(300):
        (deep / f"note-{n:04d}-about-the-kestrel-routing-engine.md").write_text(
            f"# Note {n}\n\nKestrel routing note number {n}.\n"
        )
    return root


def assert_bounded(tool: str, outcome: CallToolResult) -> None:
    size = result_chars(outcome)
    assert size < RESULT_MAX_CHARS, f"{tool}: {size:,} characters"


async def call(mcp: Client, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    outcome = await mcp.call_tool(tool, arguments)
    assert_bounded(tool, outcome)
    return outcome


async def test_every_tool_result_stays_under_the_bound_on_a_corpus_with_a_5_mb_file(
    big_corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    assert (big_corpus / "logs" / "big.log").stat().st_size >= BIG_BYTES
    async with serving(
        big_corpus, running_emulator.base_url, tmp_path / "s", max_file_bytes=8 * 1024 * 1024
    ) as (mcp, _):
        listing = await call(mcp, "list_documents", {"limit": 1000})
        docs = listing.structured_content
        assert docs is not None
        assert "logs/big.log" in {d["path"] for d in docs["documents"]} or docs["next_offset"]
        assert docs["total"] > len(docs["documents"])  # the page was cut to the budget
        rest = await call(mcp, "list_documents", {"offset": docs["next_offset"], "limit": 1000})
        assert rest.structured_content["offset"] == docs["next_offset"]  # type: ignore[index]

        page = await call(mcp, "read_document", {"path": "logs/big.log"})
        text = page.structured_content
        assert text is not None
        assert text["start_line"] == 1
        assert text["next_start_line"] == text["end_line"] + 1
        assert len(text["text"]) <= READ_MAX_CHARS
        await call(
            mcp, "read_document", {"path": "logs/big.log", "start_line": 40_000, "end_line": 80_000}
        )

        one_line = await call(mcp, "read_document", {"path": "minified.json"})
        cut = one_line.structured_content
        assert cut is not None
        assert cut["line_cut"] is True
        assert cut["next_start_line"] is None
        assert len(cut["text"]) == READ_MAX_CHARS
        assert "cut short" in one_line.content[0].text  # type: ignore[union-attr]

        first = await call(mcp, "search", {"query": "kestrel routing shipment", "limit": 50})
        hits = first.structured_content
        assert hits is not None
        assert hits["next_offset"] == len(hits["hits"])
        second = await call(
            mcp, "search", {"query": "kestrel routing shipment", "offset": hits["next_offset"]}
        )
        again = second.structured_content
        assert again is not None
        seen = {(h["path"], h["start_line"]) for h in hits["hits"]}
        assert seen.isdisjoint((h["path"], h["start_line"]) for h in again["hits"])

        await call(mcp, "cache_status", {})
        await call(mcp, "ask", {"question": "Which port does Kestrel listen on?"})


def test_a_long_answer_with_many_citations_is_cut_to_the_bound() -> None:
    citation = CitationOut(path="a/" * 40 + "doc.md", start_line=1, end_line=9, quote="q" * 5_000)
    answer = AskResult.model_validate(
        {
            "answer": "word " * 40_000,
            "citations": [citation] * 300,
            "usage": {
                "input_tokens": 1, "cache_read_tokens": 2, "cache_write_5m_tokens": 0,
                "cache_write_1h_tokens": 0, "output_tokens": 3,
            },
            "cost_usd": 0.1, "uncached_cost_usd": 0.2, "backend": "anthropic",
            "model": "claude-sonnet-5-5", "snapshot_version": 1,
            "snapshot_time": "2026-01-01T00:00:00+00:00", "shards": [1], "corpus_share": 1.0,
            "documents_not_consulted": 0,
        }
    )  # fmt: skip
    out = bound_answer(answer)
    assert len(out.citations) == MAX_CITATIONS
    assert out.more_citations == 300 - MAX_CITATIONS
    assert "more characters cut" in out.answer
    rendered = render_answer(out)
    assert f"and {300 - MAX_CITATIONS} more sources" in rendered
    assert_bounded("ask", result(rendered, out))


async def test_a_status_with_many_blocks_lists_only_the_first(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        real = (await mcp.call_tool("cache_status", {})).structured_content
    assert real is not None
    many = CacheStatus.model_validate({**real, "blocks": real["blocks"] * 500})
    out = bound_status(many)
    assert len(out.blocks) == MAX_BLOCKS_SHOWN
    assert out.blocks_not_shown == len(many.blocks) - MAX_BLOCKS_SHOWN
    rendered = render_status(out)
    assert f"{out.blocks_not_shown} more blocks" in rendered
    assert_bounded("cache_status", result(rendered, out))
