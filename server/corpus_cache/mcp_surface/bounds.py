"""How large a tool result may grow.

Claude Code warns above 10k tokens of tool output and cuts it at 25k; a result carries
its text twice (the text content and the structured content), so each part is kept to a
budget that leaves the whole result near 10k tokens even at 3 characters a token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mcp.types import CallToolResult

from corpus_cache.corpus.documents import Document
from corpus_cache.mcp_surface.results import AskResult, CacheStatus

T = TypeVar("T")

RESULT_MAX_CHARS = 40_000  # a whole result as JSON on the wire; tests hold every tool to it
LIST_BUDGET_CHARS = 12_000  # one page of a list (search hits, documents), text and JSON each

READ_MAX_LINES = 400
READ_MAX_CHARS = 14_000  # one page of read_document
SNIPPET_CHARS = 500  # one search hit
ANSWER_MAX_CHARS = 10_000  # an answer; 1,024 answer tokens is about 4,000 characters
MAX_CITATIONS = 20
QUOTE_CHARS = 240  # one cited quote in the structured result
MAX_BLOCKS_SHOWN = 40  # cache_status lists at most this many cache blocks
ERROR_MAX_CHARS = 2_000  # an error message, which may quote what the caller sent


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} … [{len(text) - limit:,} more characters cut]"


def take_within(items: Sequence[T], size: Callable[[T], int], budget: int) -> list[T]:
    """The longest prefix of `items` whose sizes add up to at most `budget`; never empty
    when `items` is not, so a page always makes progress."""
    taken: list[T] = []
    used = 0
    for item in items:
        used += size(item)
        if taken and used > budget:
            break
        taken.append(item)
    return taken


@dataclass(frozen=True)
class LinePage:
    text: str
    end_line: int
    line_cut: bool  # one line longer than a page, cut short


def page_of_lines(doc: Document, start: int, end: int) -> LinePage:
    """Lines `start`..`end` of `doc`, as many whole lines as fit one page; a single line
    longer than a page (minified files, CSV without newlines) is cut."""
    last = min(end, start + READ_MAX_LINES - 1)
    text = doc.lines(start, last)
    if len(text) <= READ_MAX_CHARS:
        return LinePage(text, last, False)
    whole = text.count("\n", 0, READ_MAX_CHARS)
    if whole:
        last = start + whole - 1
        return LinePage(doc.lines(start, last), last, False)
    return LinePage(text[:READ_MAX_CHARS], start, True)


def result_chars(result: CallToolResult) -> int:
    """The size of a result as the client receives it."""
    return len(result.model_dump_json(by_alias=True, exclude_none=True))


def bound_answer(out: AskResult) -> AskResult:
    """An answer within budget: the text clipped, the first citations kept, quotes short."""
    citations = [
        c.model_copy(update={"quote": clip(c.quote, QUOTE_CHARS)})
        for c in out.citations[:MAX_CITATIONS]
    ]
    return out.model_copy(
        update={
            "answer": clip(out.answer, ANSWER_MAX_CHARS),
            "citations": citations,
            "more_citations": out.more_citations + len(out.citations) - len(citations),
        }
    )


def bound_status(out: CacheStatus) -> CacheStatus:
    """The cache status within budget: a sharded corpus can have many blocks."""
    shown = out.blocks[:MAX_BLOCKS_SHOWN]
    return out.model_copy(
        update={
            "blocks": shown,
            "blocks_not_shown": out.blocks_not_shown + len(out.blocks) - len(shown),
        }
    )
