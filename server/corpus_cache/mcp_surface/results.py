"""What the MCP tools return: structured results and the text a person or model reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from corpus_cache.accounting.ledger import Totals
from corpus_cache.config import answers_offline
from corpus_cache.errors import LedgerUnavailableError
from corpus_cache.mcp_surface.limits_status import LimitsOut, limits_out, render_limits
from corpus_cache.mcp_surface.sharing_status import SharingOut, sharing_out
from corpus_cache.mcp_surface.startup import STARTING, EngineSlot
from corpus_cache.wording import approximately, plural, tokens_figure, usd

if TYPE_CHECKING:  # loaded after the server answers: see startup.py
    from corpus_cache.cache.live_corpus import Corpus
    from corpus_cache.engine.answers import Answer
    from corpus_cache.engine.build import BuildProgress
    from corpus_cache.engine.core import Engine

# --- structured results ---------------------------------------------------------------


class CitationOut(BaseModel):
    path: str
    start_line: int
    end_line: int
    quote: str
    page: int | None = Field(default=None, description="the PDF page, for a PDF's text")


class UsageOut(BaseModel):
    input_tokens: int
    cache_read_tokens: int
    cache_write_5m_tokens: int
    cache_write_1h_tokens: int
    output_tokens: int


class AskResult(BaseModel):
    answer: str
    citations: list[CitationOut]
    usage: UsageOut
    cost_usd: float
    uncached_cost_usd: float
    backend: str = Field(description="'anthropic', or 'offline-emulator' (extractive, not Claude)")
    model: str
    snapshot_version: int
    snapshot_time: str
    shards: list[int] = Field(description="the shard(s) that answered")
    corpus_share: float = Field(description="share of the corpus's tokens those shards hold")
    documents_not_consulted: int
    more_citations: int = Field(
        default=0, description="citations left out to keep the result small"
    )
    estimated_usd: float = Field(
        default=0.0, description="what the question was estimated to cost before it was sent"
    )
    session: str | None = Field(
        default=None, description="the conversation's id: pass it as `session` to follow up"
    )
    session_turns: int = Field(
        default=0, description="questions the session holds, this one included"
    )
    session_dropped_turns: int = Field(
        default=0, description="oldest turns dropped before this question to stay within bounds"
    )
    session_snapshot_is_live: bool = Field(
        default=True,
        description="false when the folder changed since the session began: the session keeps "
        "the snapshot it started with; start a new session to see the changes",
    )
    message_ids: list[str] = Field(
        default_factory=list,
        description="the API's id of each shard's response, as the ledger records it",
    )
    ledger_note: str | None = Field(
        default=None,
        description="set when the ledger could not record this answer: why, and where its "
        "row is kept until it is added",
    )


class SearchHitOut(BaseModel):
    path: str
    start_line: int
    end_line: int
    score: float
    snippet: str


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHitOut]
    offset: int = 0
    next_offset: int | None = Field(default=None, description="pass as offset for the next page")


class DocumentOut(BaseModel):
    path: str
    shard: int
    bytes: int
    lines: int
    tokens: int
    block: int
    tokens_estimated: bool = Field(
        default=False, description="tokens is a local estimate, not a count from the API"
    )
    encoding_note: str | None = Field(
        default=None, description="how the file's bytes were read, when they were not UTF-8"
    )


class DocumentList(BaseModel):
    documents: list[DocumentOut]
    total: int
    offset: int
    next_offset: int | None
    skipped: dict[str, int] = Field(description="files left out, counted by reason")


class DocumentText(BaseModel):
    path: str
    start_line: int
    end_line: int
    total_lines: int
    text: str
    next_start_line: int | None = Field(description="where to continue, if the range was cut")
    line_cut: bool = Field(
        default=False, description="the one line shown is longer than a page and was cut short"
    )


class BlockOut(BaseModel):
    shard: int
    block: int
    documents: int
    tokens: int
    prefix_tokens: int
    ttl: str | None
    first: str | None
    last: str | None
    estimated: bool = Field(
        default=False, description="the block's figures rest on local estimates, not counts"
    )


class IndexingOut(BaseModel):
    phase: str
    files_read: int
    files_total: int | None
    seconds_left: float | None = Field(description="a rough time to the end of reading files")
    message: str


class SpendOut(BaseModel):
    backend: str = Field(
        default="anthropic", description="who answered these requests: 'anthropic' bills"
    )
    billed: bool = Field(
        default=True,
        description="false for the offline emulator: its dollars are what the same requests "
        "would cost on the API, never added to what the API billed",
    )
    requests: int
    errors: int
    hit_rate: float
    cache_read_tokens: int
    cache_write_tokens: int
    input_tokens: int
    output_tokens: int
    spent_usd: float
    uncached_usd: float
    saved_usd: float
    maybe_billed_requests: int = Field(
        default=0,
        description="attempts the API may have billed with no usage known (sent, no response "
        "began): not in spent_usd",
    )
    maybe_billed_usd: float = Field(
        default=0.0, description="what those attempts would cost if they ran: an estimate"
    )


class PolicyOut(BaseModel):
    shard: int
    decision: str
    stable_ttl: str
    tail_ttl: str
    keep_warm_every_seconds: float | None
    max_keep_warm_requests: int
    reason: str


class BuildOut(BaseModel):
    shard: int
    slices_done: int
    slices: int
    remaining_tokens: int
    done_in_seconds: float = Field(description="an estimate, from the input-token rate limit")
    failed: str | None = Field(default=None, description="why the build stopped, if it did")
    text: str


class CacheStatus(BaseModel):
    corpus: str
    model: str
    backend: str
    min_cacheable_tokens: int
    cached: bool
    note: str
    documents: int
    corpus_tokens: int
    tokens_estimated: bool = Field(
        default=False,
        description="some documents' tokens are local estimates (calibrated on a sample of "
        "counts), not counts: the figures are approximate",
    )
    estimate_error: float | None = Field(
        default=None, description="the estimates' relative error bound, planned around"
    )
    instructions_tokens: int
    budget_tokens: int = Field(description="most corpus tokens one request carries")
    shards: int
    blocks: list[BlockOut]
    too_large: list[str] = Field(description="documents larger than the budget on their own")
    skipped: dict[str, int]
    snapshot_version: int
    snapshot_time: str
    folder_problem: str | None = Field(
        default=None,
        description="why the corpus path no longer leads to the folder being served (gone, "
        "or another folder or a symlink in its place): the last snapshot is served meanwhile",
    )
    spend: SpendOut = Field(description="the requests of the backend answering now")
    other_spend: list[SpendOut] = Field(
        default_factory=list,
        description="the ledger's requests on this corpus by other backends, each apart",
    )
    last_prewarm: str | None = Field(
        default=None, description="the last pre-warm after a change (--prewarm), and its cost"
    )
    cache_policy: list[PolicyOut] = Field(
        default_factory=list, description="per shard: the TTL and keep-warm decision, and why"
    )
    blocks_not_shown: int = Field(
        default=0, description="blocks left out of `blocks` to keep it small"
    )
    ledger_note: str | None = Field(
        default=None,
        description="set when the ledger cannot be written or read: why, and where the "
        "requests it could not record are kept",
    )
    indexing: IndexingOut | None = Field(
        default=None,
        description="set while the first index of the folder runs: how far it is (the "
        "layout and documents are empty until it ends)",
    )
    cache_build: list[BuildOut] = Field(
        default_factory=list,
        description="shards whose cache is being written a slice per request, within the "
        "input-token rate limit, or whose build stopped: how far, and when it is done",
    )
    rate_limits: LimitsOut | None = Field(
        default=None,
        description="the account's rate limits as known (from --tier or the API's headers), "
        "what is available now, and the requests waiting for them",
    )
    sharing: SharingOut | None = Field(
        default=None,
        description="the servers sharing this cache through the state folder: how many, "
        "which one keeps it warm, and whether this one does",
    )


def _build_out(progress: BuildProgress) -> BuildOut:
    return BuildOut(
        shard=progress.shard, slices_done=progress.done, slices=progress.total,
        remaining_tokens=progress.remaining_tokens,
        done_in_seconds=round(progress.eta_seconds, 1), failed=progress.failed,
        text=progress.describe(),
    )  # fmt: skip


# --- rendering ------------------------------------------------------------------------


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def result(text: str, structured: BaseModel) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=structured.model_dump(mode="json"),
    )


def ask_result(answer: Answer) -> AskResult:
    usage = answer.usage
    return AskResult(
        answer=answer.text,
        citations=[CitationOut(**vars(c)) for c in answer.citations],
        usage=UsageOut(
            input_tokens=usage.input_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_5m_tokens=usage.cache_write_5m_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            output_tokens=usage.output_tokens,
        ),
        cost_usd=round(answer.cost_usd, 6),
        uncached_cost_usd=round(answer.uncached_cost_usd, 6),
        backend=answer.backend,
        model=answer.model,
        snapshot_version=answer.snapshot_version,
        snapshot_time=iso(answer.snapshot_time),
        shards=list(answer.shards),
        corpus_share=round(answer.corpus_share, 4),
        documents_not_consulted=answer.documents_not_consulted,
        estimated_usd=round(answer.estimated_usd, 6),
        session=answer.session,
        session_turns=answer.session_turns,
        session_dropped_turns=answer.session_dropped_turns,
        session_snapshot_is_live=answer.session_snapshot_is_live,
        message_ids=list(answer.message_ids),
        ledger_note=(
            "the ledger could not record this answer: " + "; ".join(answer.unrecorded)
            if answer.unrecorded
            else None
        ),
    )


def one_off_write(cost_usd: float, uncached_usd: float, written_tokens: int) -> str | None:
    """Why a question cost more than it would have uncached, when it did: it wrote the cache."""
    if cost_usd <= uncached_usd + 0.00005 or not written_tokens:
        return None
    return (
        f"This question wrote the cache: {usd(cost_usd - uncached_usd)} more than sending it "
        "uncached, once; the questions that read it before it expires pay a tenth of the "
        "input price for it."
    )


def render_answer(result: AskResult) -> str:
    lines = [result.answer, ""]
    if result.citations:
        lines.append("Sources:")
        for number, c in enumerate(result.citations, start=1):
            span = (
                f"{c.start_line}" if c.start_line == c.end_line else f"{c.start_line}-{c.end_line}"
            )
            quote = " ".join(c.quote.split())
            quote = quote if len(quote) <= 200 else quote[:197] + "..."
            page = f" (page {c.page})" if c.page is not None else ""
            lines.append(f"[{number}] {c.path}:{span}{page} “{quote}”")
        if result.more_citations:
            lines.append(f"(and {result.more_citations} more sources, left out for length)")
        lines.append("")
    u = result.usage
    prompt = (
        u.input_tokens + u.cache_read_tokens + u.cache_write_5m_tokens + u.cache_write_1h_tokens
    )
    source = (
        "offline emulator (extractive, not Claude)"
        if result.backend == "offline-emulator"
        else "Claude"
    )
    if result.session is not None:
        note = f"Session {result.session}, question {result.session_turns}"
        if result.session_dropped_turns:
            note += (
                f"; its {result.session_dropped_turns} oldest turn(s) were dropped to stay "
                "within the session's length"
            )
        if not result.session_snapshot_is_live:
            note += (
                "; answered from the snapshot the session began with: the folder has changed "
                "since, start a new session to see the changes"
            )
        lines.append(note + ".")
    if result.ledger_note:
        lines.append(f"Note: {result.ledger_note}.")
    written = u.cache_write_5m_tokens + u.cache_write_1h_tokens
    if (write := one_off_write(result.cost_usd, result.uncached_cost_usd, written)) is not None:
        lines.append(write)
    lines.append(
        f"— answered by {source}, {result.model}; {u.cache_read_tokens:,} of {prompt:,} prompt "
        f"tokens read from cache; ${result.cost_usd:.4f} "
        f"(uncached ${result.uncached_cost_usd:.4f}, estimated ${result.estimated_usd:.4f}); "
        f"corpus snapshot v{result.snapshot_version} of {result.snapshot_time}"
        + (
            f"; shard(s) {', '.join(map(str, result.shards))} hold "
            f"{result.corpus_share:.0%} of the corpus, {result.documents_not_consulted} "
            "documents were not consulted"
            if result.documents_not_consulted
            else ""
        )
    )
    return "\n".join(lines)


def indexing_out(engine: Engine) -> IndexingOut:
    indexing = engine.indexing
    left = indexing.seconds_left()
    return IndexingOut(
        phase=indexing.phase,
        files_read=indexing.files_done,
        files_total=indexing.files_total,
        seconds_left=round(left, 1) if left is not None else None,
        message=indexing.advice(),
    )


def starting_out(slot: EngineSlot) -> IndexingOut:
    """Before the engine has arrived: the server is starting, or could not."""
    return IndexingOut(
        phase=STARTING, files_read=0, files_total=None, seconds_left=None, message=slot.advice()
    )


def starting_status(slot: EngineSlot) -> CacheStatus:
    """The status before the engine has arrived: what the settings say, nothing read yet."""
    settings, model = slot.settings, slot.model
    backend = "offline-emulator" if answers_offline(settings.offline) else "anthropic"
    nothing = _spend_out(backend, Totals(0, 0, 0, 0, 0, 0, 0.0, 0.0))
    return CacheStatus(
        corpus=str(settings.corpus), model=model.id, backend=backend,
        min_cacheable_tokens=model.min_cacheable_tokens, cached=False, note=slot.describe(),
        documents=0, corpus_tokens=0, instructions_tokens=0,
        budget_tokens=settings.budget_tokens or 0, shards=0, blocks=[], too_large=[],
        skipped={}, snapshot_version=0, snapshot_time="", spend=nothing,
        ledger_note="not read yet: the server is starting", indexing=starting_out(slot),
    )  # fmt: skip


def _spend(engine: Engine) -> tuple[SpendOut, list[SpendOut], str | None]:
    """What the backend answering now spent, what others did, and a note on the ledger."""
    ledger_note = None
    answering = engine.answering
    others: list[SpendOut] = []
    try:
        totals = engine.totals(backend=answering)
        for backend in engine.ledger.backends(engine.corpus_key):
            if backend != answering:
                others.append(_spend_out(backend, engine.totals(backend=backend)))
    except LedgerUnavailableError as exc:
        totals, ledger_note = Totals(0, 0, 0, 0, 0, 0, 0.0, 0.0), f"{exc}; spend is not shown"
    if engine.ledger.waiting:
        ledger_note = (
            (ledger_note + "; " if ledger_note else "")
            + f"{engine.ledger.waiting} request(s) could not be recorded in the ledger yet"
            + (f" ({engine.ledger.fault})" if engine.ledger.fault else "")
            + f": they are kept in {engine.ledger.journal.path} and counted in the spend"
        )
    return _spend_out(answering, totals), others, ledger_note


def status(engine: Engine) -> CacheStatus:
    spend, others, ledger_note = _spend(engine)
    if not engine.indexed:
        return CacheStatus(
            corpus=str(engine.settings.corpus), model=engine.model.id,
            backend=engine.backend.kind, min_cacheable_tokens=engine.model.min_cacheable_tokens,
            cached=False, note=engine.indexing.describe(), documents=0, corpus_tokens=0,
            instructions_tokens=0, budget_tokens=engine.budget_tokens, shards=0, blocks=[],
            too_large=[], skipped={}, snapshot_version=0, snapshot_time="",
            folder_problem=engine.folder_problem(), spend=spend, other_spend=others,
            ledger_note=ledger_note, indexing=indexing_out(engine),
            rate_limits=limits_out(engine.caller), sharing=sharing_out(engine.keeper),
        )  # fmt: skip
    corpus = engine.current
    plans = [shard.plan for shard in corpus.shards]
    return CacheStatus(
        corpus=str(engine.settings.corpus),
        model=engine.model.id,
        backend=engine.backend.kind,
        min_cacheable_tokens=engine.model.min_cacheable_tokens,
        cached=any(plan.cached for plan in plans),
        note=layout_note(corpus),
        documents=len(corpus.snapshot.documents),
        corpus_tokens=corpus.shown_tokens,
        tokens_estimated=bool(corpus.estimated),
        estimate_error=round(corpus.estimate_error, 3) if corpus.estimated else None,
        instructions_tokens=plans[0].instructions_tokens,
        budget_tokens=corpus.layout.budget_tokens,
        shards=len(plans),
        blocks=[BlockOut(**b) for b in engine.describe_layout()],
        too_large=list(corpus.layout.oversized),
        skipped=engine.skipped_summary(),
        snapshot_version=corpus.snapshot.version,
        snapshot_time=iso(corpus.snapshot.created_at),
        folder_problem=engine.folder_problem(),
        spend=spend,
        other_spend=others,
        last_prewarm=(
            f"shard(s) {', '.join(map(str, engine.last_prewarm.shards))} pre-warmed at "
            f"{iso(engine.last_prewarm.at)} for ${engine.last_prewarm.cost_usd:.4f}"
            if engine.last_prewarm is not None
            else None
        ),
        cache_policy=[
            PolicyOut(
                shard=shard.number,
                decision=d.name,
                stable_ttl=d.stable_ttl,
                tail_ttl=d.tail_ttl,
                keep_warm_every_seconds=d.ping_every,
                max_keep_warm_requests=d.max_pings,
                reason=d.reason,
            )
            for shard in corpus.shards
            if shard.plan.cached and (d := engine.ttl_decision(shard))
        ],
        ledger_note=ledger_note,
        cache_build=[_build_out(p) for p in engine.builder.progress()],
        rate_limits=limits_out(engine.caller),
        sharing=sharing_out(engine.keeper),
    )


def _spend_out(backend: str, totals: Totals) -> SpendOut:
    return SpendOut(backend=backend, billed=backend == "anthropic", **totals.as_dict())


def _spend_line(s: SpendOut, head: str) -> str:
    who = "Claude API" if s.billed else "offline emulator, not billed: priced at API rates"
    line = (
        f"{head} ({who}): {plural(s.requests, 'request')}, hit rate {s.hit_rate:.1%}, "
        f"{'spent' if s.billed else 'would cost'} {usd(s.spent_usd)} vs "
        f"{usd(s.uncached_usd)} uncached"
    )
    maybe = (
        f" Apart: {plural(s.maybe_billed_requests, 'request')} that may have been billed, "
        f"about {usd(s.maybe_billed_usd)} if they ran (sent, and no response began)."
        if s.maybe_billed_requests
        else ""
    )
    if s.saved_usd < -0.00005:
        return (
            f"{line}: {usd(-s.saved_usd)} more than uncached so far, as cache writes (1.25x "
            "the input price) are repaid only by later questions that read them (0.1x)." + maybe
        )
    return f"{line} (saved {usd(s.saved_usd)}).{maybe}"


def layout_note(corpus: Corpus) -> str:
    """The layout in one phrase: a single shard's own note, or what several add up to."""
    plans = [shard.plan for shard in corpus.shards]
    if len(plans) == 1:
        return plans[0].note
    cached = [plan for plan in plans if plan.cached]
    parts = []
    if cached:
        blocks = sum(len(plan.blocks) for plan in cached)
        parts.append(
            f"{plural(blocks, 'cached block')} in all, every breakpoint above the "
            f"{plans[0].min_cacheable_tokens:,}-token minimum"
        )
    if len(cached) < len(plans):
        small = len(plans) - len(cached)
        parts.append(f"{plural(small, 'shard')} below that minimum, sent uncached")
    old = sum(len(plan.superseded) for plan in plans)
    if old:
        keep = "keeps its" if old == 1 else "keep their"
        parts.append(
            f"{plural(old, 'edited document')} {keep} old copy in the cached prefix until it "
            "is next rewritten"
        )
    return f"{plural(len(plans), 'shard')}: " + "; ".join(parts)


def render_status(out: CacheStatus) -> str:
    if out.indexing is not None:
        lines = [
            f"Corpus {out.corpus}: {out.indexing.message}.",
            f"Model {out.model} via {out.backend}; minimum cacheable prefix "
            f"{out.min_cacheable_tokens:,} tokens.",
        ]
        if out.indexing.phase != STARTING:  # the ledger is read once the engine has started
            lines.append(_spend_line(out.spend, "Spend"))
        lines.extend(_spend_line(other, "Also in the ledger") for other in out.other_spend)
        if out.folder_problem:
            lines.insert(0, f"Warning: {out.folder_problem}.")
        if out.rate_limits is not None:
            lines.extend(render_limits(out.rate_limits))
        if out.sharing is not None and out.sharing.instances > 1:
            lines.append(out.sharing.text)
        return "\n".join(lines)
    lines = [
        f"Corpus {out.corpus}: {plural(out.documents, 'document')}, "
        f"{tokens_figure(out.corpus_tokens, out.tokens_estimated)} "
        f"(snapshot v{out.snapshot_version} of {out.snapshot_time}).",
        f"Model {out.model} via {out.backend}; minimum cacheable prefix "
        f"{out.min_cacheable_tokens:,} tokens.",
        f"Layout: {out.note}.",
    ]
    if out.folder_problem:
        lines.insert(0, f"Warning: {out.folder_problem}.")
    if out.tokens_estimated and out.estimate_error is not None:
        lines.append(
            f"Token figures marked ~ are local estimates (within ±{out.estimate_error:.0%} per "
            "document, as calibrated on a sample of counts); the layout keeps every breakpoint "
            "above the minimum and every shard within the budget at either end of that range."
        )
    for build in out.cache_build:
        where = f"Shard {build.shard}: b" if out.shards > 1 else "B"
        lines.append(f"{where}{build.text[1:]}.")
    for b in out.blocks:
        ttl = f"breakpoint, TTL {b.ttl}" if b.ttl else "no breakpoint"
        where = f"shard {b.shard} block {b.block}" if out.shards > 1 else f"block {b.block}"
        tokens = (
            f"{approximately(b.tokens, True)} tokens" if b.estimated else plural(b.tokens, "token")
        )
        lines.append(
            f"  {where}: {plural(b.documents, 'document')}, {tokens} "
            f"(prefix {approximately(b.prefix_tokens, b.estimated)}), {ttl}"
        )
    lines.append(_spend_line(out.spend, "Spend"))
    lines.extend(_spend_line(other, "Also in the ledger") for other in out.other_spend)
    if out.last_prewarm:
        lines.append(f"After the last change, {out.last_prewarm}.")
    for policy in out.cache_policy:
        where = f"Shard {policy.shard}: " if out.shards > 1 else ""
        lines.append(f"Cache policy: {where}{policy.reason}")
    if out.blocks_not_shown:
        lines.append(f"  ... and {out.blocks_not_shown} more blocks, left out for length")
    if out.skipped:
        lines.append("Left out: " + ", ".join(f"{n} {r}" for r, n in out.skipped.items()) + ".")
    if out.ledger_note:
        lines.append(f"Ledger: {out.ledger_note}.")
    if out.rate_limits is not None:
        lines.extend(render_limits(out.rate_limits))
    if out.sharing is not None and out.sharing.instances > 1:
        lines.append(out.sharing.text)
    return "\n".join(lines)
