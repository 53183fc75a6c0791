"""The MCP surface: tools in a fixed order, resources, each with text and structured content.

`build_server(engine)` returns an `MCPServer`; `corpus-cache serve` runs it over stdio and
tests run it in memory with `Client(build_server(engine))`.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resources import FunctionResource
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from . import __version__
from .engine import Engine
from .errors import CorpusCacheError
from .results import (
    AskResult,
    CacheStatus,
    DocumentList,
    DocumentOut,
    DocumentText,
    SearchHitOut,
    SearchResult,
    ask_result,
    render_answer,
    render_status,
    result,
    status,
)

log = logging.getLogger(__name__)

READ_MAX_LINES = 400
READ_MAX_CHARS = 40_000
SNIPPET_CHARS = 600

INSTRUCTIONS = (
    "corpus-cache serves one folder of documents. Use `search` (free, local) to find where "
    "something is, `read_document` to read exact lines, and `ask` to have Claude answer a "
    "question against the whole cached corpus with citations (it costs API tokens; the "
    "cache keeps repeat questions cheap). `cache_status` reports the cache layout and "
    "spending."
)


# --- the server -----------------------------------------------------------------------


def build_server(engine: Engine) -> MCPServer:
    server = MCPServer(
        "corpus-cache", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(
        description="Answer a question with Claude against the whole corpus, which is sent as "
        "prompt-cached documents. Returns the answer with citations (file and line), the "
        "token usage and its cost. Costs API tokens; repeat questions read the cache.",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def ask(
        question: Annotated[str, Field(description="the question, in natural language")],
    ) -> Annotated[CallToolResult, AskResult]:
        try:
            answer = await engine.ask(question)
        except CorpusCacheError as exc:
            raise _tool_error(exc) from exc
        out = ask_result(answer)
        return result(render_answer(out), out)

    @server.tool(
        description="Search the corpus locally (BM25) for passages matching the words of a "
        "query. Free: no API call. Returns paths, line ranges and snippets.",
        annotations=read_only,
    )
    def search(
        query: Annotated[str, Field(description="words to look for")],
        limit: Annotated[int, Field(ge=1, le=50, description="how many passages")] = 10,
    ) -> Annotated[CallToolResult, SearchResult]:
        try:
            hits = engine.search(query, limit)
        except CorpusCacheError as exc:
            raise _tool_error(exc) from exc
        out = SearchResult(
            query=query,
            hits=[
                SearchHitOut(
                    path=h.passage.path,
                    start_line=h.passage.start_line,
                    end_line=h.passage.end_line,
                    score=round(h.score, 4),
                    snippet=h.passage.text[:SNIPPET_CHARS],
                )
                for h in hits
            ],
        )
        if not out.hits:
            return result(f"No passage matches {query!r}.", out)
        text = "\n\n".join(
            f"{h.path}:{h.start_line}-{h.end_line} (score {h.score:.2f})\n{h.snippet.rstrip()}"
            for h in out.hits
        )
        return result(text, out)

    @server.tool(
        description="List the documents of the corpus with their size in tokens and the cache "
        "block holding each, and count the files left out by reason. Paged.",
        annotations=read_only,
    )
    def list_documents(
        offset: Annotated[int, Field(ge=0, description="index of the first document")] = 0,
        limit: Annotated[int, Field(ge=1, le=1000, description="documents per page")] = 200,
    ) -> Annotated[CallToolResult, DocumentList]:
        corpus = engine.current
        blocks = engine.block_of()
        docs = corpus.snapshot.documents
        page = docs[offset : offset + limit]
        out = DocumentList(
            documents=[
                DocumentOut(
                    path=d.path,
                    bytes=d.size,
                    lines=d.line_count,
                    tokens=corpus.tokens.get(d.path, 0),
                    block=blocks.get(d.path, 0),
                )
                for d in page
            ],
            total=len(docs),
            offset=offset,
            next_offset=offset + limit if offset + limit < len(docs) else None,
            skipped=engine.skipped_summary(),
        )
        lines = [f"{d.path}  ({d.tokens:,} tokens, block {d.block})" for d in out.documents]
        lines.append(f"{len(page)} of {len(docs)} documents shown.")
        if out.next_offset is not None:
            lines.append(f"More: call list_documents with offset={out.next_offset}.")
        if out.skipped:
            left_out = ", ".join(f"{n} {reason}" for reason, n in out.skipped.items())
            lines.append(f"Left out: {left_out}.")
        return result("\n".join(lines), out)

    @server.tool(
        description="Read lines of one document of the corpus, by its path as list_documents "
        "shows it. Long ranges are cut; the result says where to continue.",
        annotations=read_only,
    )
    def read_document(
        path: Annotated[str, Field(description="path relative to the corpus folder")],
        start_line: Annotated[int, Field(ge=1, description="first line, 1-based")] = 1,
        end_line: Annotated[
            int | None, Field(ge=1, description="last line, inclusive; default: to the end")
        ] = None,
    ) -> Annotated[CallToolResult, DocumentText]:
        try:
            doc = engine.document(path)
        except CorpusCacheError as exc:
            raise _tool_error(exc) from exc
        total = doc.line_count
        if start_line > max(total, 1):
            raise ToolError(
                f"{doc.path} has {total} lines; start_line {start_line} is past the end"
            )
        last = min(end_line or total, total, start_line + READ_MAX_LINES - 1)
        if end_line is not None and end_line < start_line:
            raise ToolError(f"end_line {end_line} is before start_line {start_line}")
        text = doc.lines(start_line, last) if total else ""
        if len(text) > READ_MAX_CHARS:
            text = text[:READ_MAX_CHARS]
            last = start_line + text.count("\n") - 1 if text.count("\n") else start_line
            text = doc.lines(start_line, max(start_line, last))
        wanted_end = min(end_line or total, total)
        out = DocumentText(
            path=doc.path,
            start_line=start_line,
            end_line=last,
            total_lines=total,
            text=text,
            next_start_line=last + 1 if last < wanted_end else None,
        )
        numbered = "\n".join(
            f"{n:>6}  {line}" for n, line in enumerate(text.splitlines(), start=start_line)
        )
        footer = f"\n[{doc.path}: lines {start_line}-{last} of {total}"
        footer += f"; continue at start_line={out.next_start_line}]" if out.next_start_line else "]"
        return result(numbered + footer, out)

    @server.tool(
        description="Report the cache: the layout of the corpus in cached blocks, tokens per "
        "block, the model's minimum cacheable length, the hit rate, and dollars spent versus "
        "what the same requests would have cost uncached.",
        annotations=read_only,
    )
    def cache_status() -> Annotated[CallToolResult, CacheStatus]:
        out = status(engine)
        return result(render_status(out), out)

    @server.resource(
        "corpus://index",
        name="index",
        description="Every document of the corpus with its URI and tokens, and what was left out",
        mime_type="application/json",
    )
    def index_resource() -> str:
        corpus = engine.current
        documents = [
            {
                "path": d.path,
                "uri": f"corpus://doc/{d.path}",
                "tokens": corpus.tokens.get(d.path, 0),
                "bytes": d.size,
            }
            for d in corpus.snapshot.documents
        ]
        skipped = [{"path": s.path, "reason": s.reason} for s in corpus.snapshot.skipped]
        body = {
            "snapshot_version": corpus.snapshot.version,
            "documents": documents,
            "left_out": skipped[:1000],
            "left_out_total": len(skipped),
        }
        return json.dumps(body, indent=1)

    @server.resource(
        "corpus://stats",
        name="stats",
        description="Cache layout, hit rate and spending, as cache_status reports them",
        mime_type="application/json",
    )
    def stats_resource() -> str:
        return status(engine).model_dump_json(indent=1)

    @server.resource(
        "corpus://doc/{+path}",
        name="document",
        description="The text of one document of the corpus",
        mime_type="text/plain",
    )
    def document_resource(path: str) -> str:
        try:
            return engine.document(path).text
        except CorpusCacheError as exc:
            raise ValueError(str(exc)) from exc

    for doc in engine.current.snapshot.documents:
        server.add_resource(_document_resource(engine, doc.path))
    return server


def _tool_error(exc: CorpusCacheError) -> ToolError:
    return ToolError(str(exc))


def _document_resource(engine: Engine, path: str) -> FunctionResource:
    def read() -> str:
        try:
            return engine.document(path).text
        except CorpusCacheError as exc:
            raise ValueError(str(exc)) from exc

    return FunctionResource.from_function(
        read, uri=f"corpus://doc/{path}", name=path, mime_type="text/plain"
    )
