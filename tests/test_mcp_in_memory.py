"""The MCP tools and resources, through a real MCP client connected in memory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from support.corpus_fixture import FACTS, write_corpus
from support.emulator_control import Control
from support.mcp_session import serving

pytestmark = pytest.mark.anyio

TOOLS = ["ask", "search", "list_documents", "read_document", "cache_status", "refresh"]


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


async def test_tools_are_listed_in_a_fixed_order_with_schemas(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s", mode) as (mcp, _):
        tools = (await mcp.list_tools()).tools
    assert [t.name for t in tools] == TOOLS
    assert all(t.output_schema is not None for t in tools)
    assert all(t.description for t in tools)


async def test_ask_answers_with_citations_to_file_and_line(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s", mode) as (mcp, _):
        result = await mcp.call_tool(
            "ask", {"question": "When does the on-call rotation hand over?"}
        )
    assert not result.is_error
    out = result.structured_content
    assert out is not None
    assert out["backend"] == "offline-emulator"  # labelled by the server that answered
    assert "offline emulator" in out["answer"]
    cited = [c for c in out["citations"] if c["path"] == "oncall.md"]
    assert cited, out["citations"]
    text = (corpus / "oncall.md").read_text().splitlines()
    quote_line = cited[0]["start_line"]
    assert "hands over every Tuesday" in text[quote_line - 1]
    assert "oncall.md:" in result.content[0].text  # type: ignore[union-attr]


async def test_the_second_question_reads_the_cache_and_the_ledger_matches_the_api(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, engine):
        first = await mcp.call_tool("ask", {"question": "Which port does Kestrel listen on?"})
        second = await mcp.call_tool("ask", {"question": "When are deploys frozen?"})
        rows = engine.ledger.requests(engine.corpus_key)
    one, two = first.structured_content["usage"], second.structured_content["usage"]  # type: ignore[index]
    prompt = sum(v for k, v in two.items() if k != "output_tokens")
    assert one["cache_write_5m_tokens"] > 0
    assert two["cache_read_tokens"] >= 0.9 * prompt

    logged = {e["id"]: e["usage"] for e in emulator.log() if e["path"] == "/v1/messages"}
    assert len(rows) == 2
    for row in rows:
        usage = logged[row.message_id]
        assert row.input_tokens == usage["input_tokens"]
        assert row.cache_read_tokens == usage["cache_read_input_tokens"]
        creation = usage["cache_creation"]
        assert row.cache_write_5m_tokens == creation["ephemeral_5m_input_tokens"]
        assert row.cache_write_1h_tokens == creation["ephemeral_1h_input_tokens"]
        assert row.output_tokens == usage["output_tokens"]
    assert rows[0].cost_usd < rows[0].uncached_cost_usd  # the read was cheaper


async def test_local_tools_cost_nothing(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    # A workspace of its own: a slow request another test left behind may still land.
    key = f"local-tools-{mode}"
    workspace = hashlib.sha256(key.encode()).hexdigest()[:16]

    def ours() -> int:
        return sum(1 for entry in emulator.log() if entry.get("workspace") == workspace)

    async with serving(corpus, running_emulator.base_url, tmp_path / "s", mode, api_key=key) as (
        mcp,
        _,
    ):
        before = ours()
        assert before > 0  # indexing counted tokens through this workspace
        search = await mcp.call_tool("search", {"query": "Kestrel port", "limit": 3})
        listing = await mcp.call_tool("list_documents", {})
        read = await mcp.call_tool(
            "read_document", {"path": "oncall.md", "start_line": 1, "end_line": 3}
        )
        status = await mcp.call_tool("cache_status", {})
        assert ours() == before
    assert search.structured_content["hits"][0]["path"] == "architecture/routing.md"  # type: ignore[index]
    assert listing.structured_content["total"] == len(FACTS)  # type: ignore[index]
    assert read.structured_content["text"].startswith("# oncall.md")  # type: ignore[index]
    assert status.structured_content["cached"] is True  # type: ignore[index]
    assert status.structured_content["blocks"]  # type: ignore[index]


async def test_read_document_refuses_paths_outside_the_corpus(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    secret = tmp_path / "outside.md"
    secret.write_text("TOP SECRET outside the corpus\n")
    os.symlink(secret, corpus / "link.md")
    async with serving(corpus, running_emulator.base_url, tmp_path / "s", mode) as (mcp, _):
        for path, message in [
            ("../outside.md", "outside the corpus"),
            (str(secret), "absolute"),
            ("link.md", "symlink to a file outside the corpus"),
            ("missing.md", "not a document of this corpus"),
        ]:
            result = await mcp.call_tool("read_document", {"path": path})
            assert result.is_error, path
            text = result.content[0].text  # type: ignore[union-attr]
            assert message in text
            assert "TOP SECRET" not in text


async def test_secrets_never_reach_the_api(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    (corpus / ".env").write_text("API_TOKEN=sk-ant-envsecret-0001\n")
    (corpus / "certs").mkdir()
    (corpus / "certs" / "server.pem").write_text("-----BEGIN PRIVATE KEY-----\npemsecret0002\n")
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        await mcp.call_tool("ask", {"question": "What is the API token?"})
        listing = await mcp.call_tool("list_documents", {})
    bodies = str([entry.get("body") for entry in emulator.log(bodies=True)])
    assert "Kestrel" in bodies  # the corpus itself was sent
    assert "envsecret" not in bodies
    assert "pemsecret" not in bodies
    assert listing.structured_content["skipped"] == {"secret file": 2}  # type: ignore[index]


async def test_bad_arguments_are_clear_errors(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s", mode) as (mcp, _):
        cases = [
            ("ask", {}, "question"),
            ("ask", {"question": "   "}, "question is empty"),
            ("search", {"query": "x", "limit": 0}, "limit"),
            ("read_document", {"path": "oncall.md", "start_line": 0}, "start_line"),
            ("read_document", {"path": "oncall.md", "start_line": 9999}, "past the end"),
            ("list_documents", {"offset": -1}, "offset"),
        ]
        for tool, arguments, message in cases:
            result = await mcp.call_tool(tool, arguments)
            assert result.is_error, (tool, arguments)
            assert message in result.content[0].text, result.content  # type: ignore[union-attr]


async def test_an_api_failure_is_an_error_result_and_charges_nothing(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, engine):
        emulator.fault(status=529, error_type="overloaded_error")
        failed = await mcp.call_tool("ask", {"question": "When are deploys frozen?"})
        recovered = await mcp.call_tool("ask", {"question": "When are deploys frozen?"})
        totals = engine.totals()
        rows = engine.ledger.requests(engine.corpus_key)  # newest first
    assert failed.is_error
    assert "529" in failed.content[0].text  # type: ignore[union-attr]
    assert not recovered.is_error
    assert (totals.requests, totals.errors) == (2, 1)
    assert rows[-1].outcome == "error"
    assert rows[-1].cost_usd == 0


async def test_long_documents_are_read_in_bounded_pages(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "long.md").write_text("".join(f"line {n}\n" for n in range(1, 2001)))
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        page = await mcp.call_tool("read_document", {"path": "long.md"})
        out = page.structured_content
        assert out is not None
        assert (out["start_line"], out["end_line"], out["total_lines"]) == (1, 400, 2000)
        assert out["next_start_line"] == 401
        last = await mcp.call_tool("read_document", {"path": "long.md", "start_line": 1901})
        assert last.structured_content["next_start_line"] is None  # type: ignore[index]


async def test_resources_serve_the_index_each_document_and_the_stats(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path, mode: str
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s", mode) as (mcp, _):
        listed = {str(r.uri) for r in (await mcp.list_resources()).resources}
        index = await mcp.read_resource("corpus://index")
        doc = await mcp.read_resource("corpus://doc/architecture/routing.md")
        stats = await mcp.read_resource("corpus://stats")
    assert {"corpus://index", "corpus://stats", "corpus://doc/oncall.md"} <= listed
    assert '"architecture/routing.md"' in index.contents[0].text  # type: ignore[union-attr]
    assert "Kestrel" in doc.contents[0].text  # type: ignore[union-attr]
    assert '"min_cacheable_tokens": 512' in stats.contents[0].text  # type: ignore[union-attr]


async def test_a_corpus_below_the_minimum_is_served_uncached_and_says_so(
    tmp_path: Path, running_emulator: Any, emulator: Control
) -> None:
    corpus = tmp_path / "tiny"
    corpus.mkdir()
    (corpus / "note.md").write_text("The office opens at eight.\n")
    async with serving(
        corpus, running_emulator.base_url, tmp_path / "s", model="claude-haiku-4-5"
    ) as (
        mcp,
        _,
    ):
        status = await mcp.call_tool("cache_status", {})
        answer = await mcp.call_tool("ask", {"question": "When does the office open?"})
    assert status.structured_content["cached"] is False  # type: ignore[index]
    assert "below the 4,096-token minimum" in status.content[0].text  # type: ignore[union-attr]
    usage = answer.structured_content["usage"]  # type: ignore[index]
    assert usage["cache_read_tokens"] == usage["cache_write_5m_tokens"] == 0


async def test_bad_tool_arguments_are_explained_in_words_without_pydantic_links(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        too_many = await mcp.call_tool("search", {"query": "deploys", "limit": 500})
        missing = await mcp.call_tool("ask", {})
    for refused in (too_many, missing):
        assert refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert "pydantic" not in text
        assert "http" not in text
        assert "validation error" not in text
    assert "`limit`: input should be less than or equal to 50 (got 500)" in (
        too_many.content[0].text  # type: ignore[union-attr]
    )
    assert "`question` is required" in missing.content[0].text  # type: ignore[union-attr]


async def test_a_paid_refresh_takes_a_real_boolean_and_spends_nothing_on_a_string(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, engine):
        refused = await mcp.call_tool("refresh", {"warm": "yes"})
        also_refused = await mcp.call_tool("refresh", {"warm": 1})
        spent = engine.totals().requests
        warmed = await mcp.call_tool("refresh", {"warm": True})
    assert refused.is_error
    assert also_refused.is_error
    assert "`warm`: input should be a valid boolean (got 'yes')" in (
        refused.content[0].text  # type: ignore[union-attr]
    )
    assert spent == 0
    assert not warmed.is_error
    assert warmed.structured_content["warmed"]  # type: ignore[index]


async def test_the_prompt_without_its_argument_is_a_clean_error_with_no_traceback(
    corpus: Path,
    running_emulator: Any,
    emulator: Control,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mcp.shared.exceptions import MCPError

    async with serving(corpus, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        with pytest.raises(MCPError) as refused:
            await mcp.get_prompt("ask_corpus", {})
        prompt = await mcp.get_prompt("ask_corpus", {"question": "When are deploys frozen?"})
    assert "needs the argument `question`" in str(refused.value)
    assert not [r for r in caplog.records if r.exc_info]
    assert "When are deploys frozen?" in str(prompt.messages[0].content)


async def test_a_one_document_folder_is_counted_in_the_singular(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "notes.md").write_text("# Notes\n\nThe deploy freeze starts on Friday.\n")
    async with serving(folder, running_emulator.base_url, tmp_path / "s") as (mcp, _):
        status = await mcp.call_tool("cache_status", {})
        listing = await mcp.call_tool("list_documents", {})
        refreshed = await mcp.call_tool("refresh", {})
    assert "1 document," in status.content[0].text  # type: ignore[union-attr]
    assert "1 of 1 document shown" in listing.content[0].text  # type: ignore[union-attr]
    assert "1 document;" in refreshed.content[0].text  # type: ignore[union-attr]
    for result in (status, listing, refreshed):
        assert "1 documents" not in result.content[0].text  # type: ignore[union-attr]
