"""The MCP surface: tools in a fixed order, resources, each with text and structured content.

`build_server(engine)` returns an `MCPServer`; `corpus-cache serve` runs it over stdio and
tests run it in memory with `Client(build_server(engine))`. `corpus-cache serve` builds it
around an `EngineSlot` instead, and answers before the engine arrives (startup.py): this
module imports the engine's modules for their types only.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    CallToolResult,
    GetPromptResult,
    InputRequiredResult,
    Resource,
    ToolAnnotations,
)
from pydantic import Field, StrictBool, StrictInt, ValidationError

from corpus_cache import __version__
from corpus_cache.api.throttles import Throttle, deadline_advice, noting_throttles
from corpus_cache.errors import CorpusCacheError
from corpus_cache.mcp_surface.bounds import (
    ERROR_MAX_CHARS,
    LIST_BUDGET_CHARS,
    SNIPPET_CHARS,
    bound_answer,
    bound_status,
    clip,
    page_of_lines,
    take_within,
)
from corpus_cache.mcp_surface.guidance import INSTRUCTIONS, add_prompts
from corpus_cache.mcp_surface.heartbeat import with_heartbeat
from corpus_cache.mcp_surface.notifications import DOCUMENT_URI_PREFIX, document_uri, notify_changes
from corpus_cache.mcp_surface.owners import session_owner
from corpus_cache.mcp_surface.refresh import RefreshResult, refresh_corpus, render_refresh
from corpus_cache.mcp_surface.results import (
    AskResult,
    CacheStatus,
    DocumentList,
    DocumentOut,
    DocumentText,
    SearchHitOut,
    SearchResult,
    ask_result,
    indexing_out,
    render_answer,
    render_status,
    result,
    starting_out,
    starting_status,
    status,
)
from corpus_cache.mcp_surface.startup import EngineSlot, corpus_ready, engine_ready
from corpus_cache.wording import approximately, plural

if TYPE_CHECKING:  # loaded after the server answers: see startup.py
    from corpus_cache.corpus.documents import Document
    from corpus_cache.corpus.search import Hit
    from corpus_cache.engine.answers import Answer
    from corpus_cache.engine.core import Engine

log = logging.getLogger(__name__)

DEADLINE_ADVICE = (
    "it was given up so that your MCP client does not time out first. Ask again: the API may "
    "be slow or overloaded right now, and a repeated question reads the cache and is quicker. "
    "If your client waits longer, raise the deadline with `corpus-cache serve --ask-deadline "
    "SECONDS` or CORPUS_CACHE_ASK_DEADLINE."
)
STILL_READING_ADVICE = (
    "it was given up so that your MCP client does not time out first, but the request goes "
    "on: the server reads its response to the end in the background, records what it costs "
    "and keeps the cache it writes. Ask again in a few seconds: the question reads that "
    "cache and is quicker. If your client waits longer, raise the deadline with "
    "`corpus-cache serve --ask-deadline SECONDS` or CORPUS_CACHE_ASK_DEADLINE."
)


# --- the server -----------------------------------------------------------------------


def build_server(engine: Engine | EngineSlot) -> MCPServer:
    """The server, around an engine, or around the slot where one will arrive: then tools
    that need it wait for it, and say how far the start is if it does not come in time."""
    slot = engine if isinstance(engine, EngineSlot) else EngineSlot.holding(engine)
    bus = InMemorySubscriptionBus()
    server = _CorpusServer(
        slot,
        "corpus-cache",
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        subscriptions=bus,
    )
    read_only = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
    add_prompts(server)

    @server.tool(
        title="Ask the corpus",
        description="Answer a question with Claude against the whole corpus, which is sent as "
        "prompt-cached documents. Returns the answer with citations (file and line), the "
        "token usage and its cost. Costs API tokens; repeat questions read the cache. "
        "Sends progress while it waits; gives up with an error before the client would.",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def ask(
        question: Annotated[str, Field(description="the question, in natural language")],
        ctx: Context[Any, Any],
        fan_out: Annotated[
            StrictInt | None,
            Field(
                ge=1,
                le=8,
                description="for a corpus split into shards: how many of the best-matching "
                "shards answer, in parallel (default: one, or the best two when the routing "
                "is unsure and both together are smaller than one shard of the window)",
            ),
        ] = None,
        session: Annotated[
            str | None,
            Field(
                max_length=100,
                description="to ask follow-up questions in one conversation: 'new' (or an id "
                "of your own) starts one, and the result's `session` continues it; follow-ups "
                "reuse the cached corpus and cache the conversation so far. A session belongs "
                "to the connection that started it; where connections cannot be told apart "
                "the server gives the id, so always continue with the result's `session`",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, AskResult]:
        owner = session_owner(ctx)  # a session is continued only by the connection it began on

        async def asking() -> Answer:
            began = anyio.current_time()
            # Within the deadline, its progress the heartbeat's.
            engine = await corpus_ready(slot)
            # What is left of the client's wait: a question the rate limits would hold
            # longer is refused at once, saying when to ask again.
            left = slot.settings.ask_deadline - (anyio.current_time() - began)
            return await engine.ask(question, fan_out, session, owner=owner, patience=left)

        try:
            with noting_throttles() as throttles:
                answer = await with_heartbeat(
                    asking,
                    ctx.report_progress,
                    interval=slot.settings.heartbeat_interval,
                    deadline=slot.settings.ask_deadline,
                    waiting_for=lambda: _waiting_for(slot),
                    on_deadline=lambda: _deadline_advice(slot, throttles),
                )
        except CorpusCacheError as exc:
            raise _tool_error(exc) from exc
        out = bound_answer(ask_result(answer))
        return result(render_answer(out), out)

    @server.tool(
        title="Search the corpus",
        description="Search the corpus locally (BM25) for passages matching the words of a "
        "query. Free: no API call. Returns paths, line ranges and snippets, best first; "
        "paged: pass next_offset as offset for more.",
        annotations=read_only,
    )
    async def search(
        query: Annotated[str, Field(description="words to look for")],
        ctx: Context[Any, Any],
        limit: Annotated[int, Field(ge=1, le=50, description="passages per page")] = 10,
        offset: Annotated[
            int, Field(ge=0, le=1000, description="passages to skip: next_offset of a page")
        ] = 0,
    ) -> Annotated[CallToolResult, SearchResult]:
        try:
            engine = await corpus_ready(slot, ctx.report_progress)
            found = engine.search(query, offset + limit + 1)
        except CorpusCacheError as exc:
            raise _tool_error(exc) from exc
        hits = take_within(found[offset : offset + limit], _hit_chars, LIST_BUDGET_CHARS)
        more = len(found) > offset + len(hits)
        query = clip(query, SNIPPET_CHARS)  # echoed back: a huge query must not swell the result
        out = SearchResult(
            query=query,
            offset=offset,
            next_offset=offset + len(hits) if more else None,
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
            return result(f"No {'more ' if offset else ''}passage matches {query!r}.", out)
        text = "\n\n".join(
            f"{h.path}:{h.start_line}-{h.end_line} (score {h.score:.2f})\n{h.snippet.rstrip()}"
            for h in out.hits
        )
        if out.next_offset is not None:
            text += f"\n\nMore: call search with offset={out.next_offset}."
        return result(text, out)

    @server.tool(
        title="List the documents",
        description="List the documents of the corpus with their size in tokens and the cache "
        "block holding each, and count the files left out by reason. Paged.",
        annotations=read_only,
    )
    async def list_documents(
        ctx: Context[Any, Any],
        offset: Annotated[int, Field(ge=0, description="index of the first document")] = 0,
        limit: Annotated[int, Field(ge=1, le=1000, description="documents per page")] = 200,
    ) -> Annotated[CallToolResult, DocumentList]:
        try:
            engine = await corpus_ready(slot, ctx.report_progress)
        except CorpusCacheError as exc:
            raise _tool_error(exc) from exc
        corpus = engine.current
        blocks = engine.block_of()
        docs = corpus.snapshot.documents
        page = take_within(docs[offset : offset + limit], _document_chars, LIST_BUDGET_CHARS)
        out = DocumentList(
            documents=[
                DocumentOut(
                    path=d.path,
                    bytes=d.size,
                    lines=d.line_count,
                    tokens=corpus.shown(d.path),
                    tokens_estimated=d.path in corpus.estimated,
                    shard=blocks.get(d.path, (0, 0))[0],
                    block=blocks.get(d.path, (0, 0))[1],
                    encoding_note=d.encoding_note or None,
                )
                for d in page
            ],
            total=len(docs),
            offset=offset,
            next_offset=offset + len(page) if offset + len(page) < len(docs) else None,
            skipped=engine.skipped_summary(),
        )
        lines = [
            f"{d.path}  ({approximately(d.tokens, d.tokens_estimated)} tokens"
            + (" (estimated)" if d.tokens_estimated else "")
            + f", shard {d.shard} block {d.block}"
            + (f"; {d.encoding_note})" if d.encoding_note else ")")
            for d in out.documents
        ]
        lines.append(f"{len(page)} of {plural(len(docs), 'document')} shown.")
        if (problem := engine.folder_problem()) is not None:
            lines.append(f"Warning: {problem}.")
        if out.next_offset is not None:
            lines.append(f"More: call list_documents with offset={out.next_offset}.")
        if out.skipped:
            left_out = ", ".join(f"{n} {reason}" for reason, n in out.skipped.items())
            lines.append(f"Left out: {left_out}.")
        return result("\n".join(lines), out)

    @server.tool(
        title="Read a document",
        description="Read lines of one document of the corpus, by its path as list_documents "
        "shows it. Long ranges are cut; the result says where to continue.",
        annotations=read_only,
    )
    async def read_document(
        path: Annotated[str, Field(description="path relative to the corpus folder")],
        ctx: Context[Any, Any],
        start_line: Annotated[int, Field(ge=1, description="first line, 1-based")] = 1,
        end_line: Annotated[
            int | None, Field(ge=1, description="last line, inclusive; default: to the end")
        ] = None,
    ) -> Annotated[CallToolResult, DocumentText]:
        try:
            engine = await corpus_ready(slot, ctx.report_progress)
            doc = engine.document(path)
        except CorpusCacheError as exc:
            raise _tool_error(exc) from exc
        total = doc.line_count
        if start_line > max(total, 1):
            raise ToolError(
                f"{doc.path} has {total} lines; start_line {start_line} is past the end"
            )
        if end_line is not None and end_line < start_line:
            raise ToolError(f"end_line {end_line} is before start_line {start_line}")
        wanted_end = min(end_line or total, total)
        page = page_of_lines(doc, start_line, wanted_end)
        text, last = (page.text, page.end_line) if total else ("", 0)
        out = DocumentText(
            path=doc.path,
            start_line=start_line,
            end_line=last,
            total_lines=total,
            text=text,
            next_start_line=last + 1 if last < wanted_end else None,
            line_cut=page.line_cut,
        )
        numbered = "\n".join(
            f"{n:>6}  {line}" for n, line in enumerate(text.splitlines(), start=start_line)
        )
        footer = f"\n[{doc.path}: lines {start_line}-{last} of {total}"
        if doc.encoding_note:
            footer += f"; {doc.encoding_note}"
        if page.line_cut:
            footer += f"; line {last} is longer than a page and was cut short"
        footer += f"; continue at start_line={out.next_start_line}]" if out.next_start_line else "]"
        return result(numbered + footer, out)

    @server.tool(
        title="Cache status",
        description="Report the cache: the layout of the corpus in cached blocks, tokens per "
        "block, the model's minimum cacheable length, the hit rate, and dollars spent versus "
        "what the same requests would have cost uncached.",
        annotations=read_only,
    )
    def cache_status() -> Annotated[CallToolResult, CacheStatus]:
        out = bound_status(_status(slot))
        return result(render_status(out), out)

    @server.tool(
        title="Rescan the folder",
        description="Rescan the corpus folder now and say what changed. The folder is watched, "
        "so saved edits are picked up within a second anyway. With warm=true, also write the "
        "cache ahead of the next question (costs a cache write per cached shard).",
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=True,
        ),
    )
    async def refresh(
        # Strict: it spends, so only a JSON true does ("yes" or 1 is refused, not taken as true).
        warm: Annotated[
            StrictBool,
            Field(description="also write the prompt cache (max_tokens 0 requests); true or false"),
        ] = False,
    ) -> Annotated[CallToolResult, RefreshResult]:
        try:
            engine = await engine_ready(slot)
            if not engine.indexed and engine.indexing.done.is_set():
                # Loaded with the engine, before it arrived: importing it here is immediate.
                from corpus_cache.engine.runtime import first_index

                await first_index(engine)  # it failed: this is the retry
            await corpus_ready(slot)
            out = await refresh_corpus(engine, warm_cache=warm)
        except CorpusCacheError as exc:
            raise ToolError(str(exc)) from exc
        return result(render_refresh(out), out)

    @server.resource(
        "corpus://index",
        name="index",
        description="Every document of the corpus with its URI and tokens, and what was left out",
        mime_type="application/json",
    )
    def index_resource() -> str:
        engine = slot.engine
        if engine is None:
            return json.dumps({"indexing": starting_out(slot).model_dump()}, indent=1)
        if not engine.indexed:
            return json.dumps({"indexing": indexing_out(engine).model_dump()}, indent=1)
        corpus = engine.current
        documents = [
            {
                "path": d.path,
                "uri": document_uri(d.path),
                "tokens": corpus.shown(d.path),
                **({"tokens_estimated": True} if d.path in corpus.estimated else {}),
                "bytes": d.size,
                **({"encoding_note": d.encoding_note} if d.encoding_note else {}),
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
        return _status(slot).model_dump_json(indent=1)

    @server.resource(
        DOCUMENT_URI_PREFIX + "{+path}",
        name="document",
        description="The text of one document of the corpus",
        mime_type="text/plain",
    )
    def document_resource(path: str) -> str:
        engine = slot.engine
        if engine is None:
            raise ResourceNotFoundError(slot.advice())
        if not engine.indexed:
            raise ResourceNotFoundError(engine.indexing.advice())
        try:
            return engine.document(path).text
        except CorpusCacheError as exc:
            raise ResourceNotFoundError(clip(str(exc), ERROR_MAX_CHARS)) from exc

    notify_changes(server, slot, bus)
    server.middleware.append(_noting_answers(slot))
    return server


def _status(slot: EngineSlot) -> CacheStatus:
    return status(slot.engine) if slot.engine is not None else starting_status(slot)


def _waiting_for(slot: EngineSlot) -> str:
    """What an `ask` waits for, said in its progress notifications."""
    engine = slot.engine
    if engine is None:
        return slot.describe()
    return (
        engine.builder.describe()
        or (engine.indexing.describe() if not engine.indexed else None)
        or "waiting for the answer"
    )


def _deadline_advice(slot: EngineSlot, throttles: list[Throttle]) -> str:
    reading = slot.engine is not None and slot.engine.read_for_no_one
    return deadline_advice(throttles, STILL_READING_ADVICE if reading else DEADLINE_ADVICE)


def _noting_answers(slot: EngineSlot) -> ServerMiddleware[Any]:
    """Middleware that notes which MCP requests were answered before the engine arrived (the
    server logs them when it does: `initialize` is answered at once, not after the start)."""

    async def noting(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.request_id is not None:  # not a notification
            slot.note_answered(ctx.method)
        return result

    return noting


class _CorpusServer(MCPServer):
    """An MCPServer whose resource list holds one resource per document of the live corpus.

    MCPServer 2.3 can add a resource but not remove one, so documents are not registered
    one by one: they are listed from the current snapshot whenever the list is asked for,
    and read through the `corpus://doc/{+path}` template. The list is never stale, and a
    deleted document is gone from it with the snapshot that dropped it."""

    def __init__(self, slot: EngineSlot, name: str, **options: Any) -> None:
        super().__init__(name, **options)
        self._slot = slot

    async def list_resources(self) -> list[Resource]:
        engine = self._slot.engine
        if engine is None or not engine.indexed:  # announced as changed once indexed
            return await super().list_resources()
        documents = [
            Resource(uri=document_uri(doc.path), name=doc.path, mime_type="text/plain")
            for doc in engine.current.snapshot.documents
        ]
        return [*await super().list_resources(), *documents]

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            # The SDK's text is pydantic's, with a link to its docs: say it as a person would.
            raise ToolError(argument_errors(name, cause)) from cause

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[Any, Any] | None = None,
    ) -> GetPromptResult | InputRequiredResult:
        prompt = self._prompt_manager.get_prompt(name)
        if prompt is not None:
            given = arguments or {}
            missing = [a.name for a in prompt.arguments or () if a.required and a.name not in given]
            if missing:
                # A protocol error the client shows; not an exception logged with a traceback.
                raise MCPError(
                    code=INVALID_PARAMS,
                    message=f"the prompt {name} needs "
                    + ", ".join(f"the argument `{m}`" for m in missing),
                )
        return await super().get_prompt(name, arguments, context)


def argument_errors(tool: str, error: ValidationError) -> str:
    """Readable reasons why `tool`'s arguments were refused, one per argument."""
    reasons = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        if item["type"] == "missing":
            reasons.append(f"`{where}` is required")
            continue
        got = repr(item.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        message = str(item["msg"])
        reasons.append(f"`{where}`: {message[0].lower()}{message[1:]} (got {got})")
    return f"invalid arguments for {tool}: " + "; ".join(reasons)


def _hit_chars(hit: Hit) -> int:
    return min(len(hit.passage.text), SNIPPET_CHARS) + len(hit.passage.path) + 60


def _document_chars(doc: Document) -> int:
    return len(doc.path) + len(doc.encoding_note) + 80


def _tool_error(exc: CorpusCacheError) -> ToolError:
    return ToolError(clip(str(exc), ERROR_MAX_CHARS))  # it may quote a huge argument
