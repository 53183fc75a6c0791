"""The first layout: documents in path order, cut into at most three cached blocks.

Inputs and outputs are shaped for the cache-optimal planner that replaces this one: it
takes documents with their token counts and returns ordered blocks, each ending in a
breakpoint with a TTL. One of the API's four breakpoints stays free for conversations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Ttl = Literal["5m", "1h"]

MAX_CORPUS_BREAKPOINTS = 3


@dataclass(frozen=True)
class PlannedDocument:
    path: str
    tokens: int


@dataclass(frozen=True)
class Block:
    paths: tuple[str, ...]
    tokens: int
    prefix_tokens: int  # everything before this block's breakpoint, instructions included
    ttl: Ttl | None  # None: no breakpoint (the corpus is served uncached)


@dataclass(frozen=True)
class Plan:
    blocks: tuple[Block, ...]
    instructions_tokens: int
    min_cacheable_tokens: int
    cached: bool
    note: str

    @property
    def total_tokens(self) -> int:
        return self.instructions_tokens + sum(block.tokens for block in self.blocks)

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(path for block in self.blocks for path in block.paths)

    @property
    def breakpoints(self) -> int:
        return sum(1 for block in self.blocks if block.ttl is not None)


def safe_minimum(min_cacheable_tokens: int) -> int:
    """count_tokens is an estimate: keep a margin so a breakpoint is never just short."""
    return int(min_cacheable_tokens * 1.05) + 32


def plan_layout(
    documents: Sequence[PlannedDocument],
    *,
    min_cacheable_tokens: int,
    instructions_tokens: int,
    max_breakpoints: int = MAX_CORPUS_BREAKPOINTS,
    ttl: Ttl = "5m",
) -> Plan:
    """Documents in path order, split into up to `max_breakpoints` blocks of similar size,
    every breakpoint's prefix at or above the model's minimum (with a margin)."""
    ordered = sorted(documents, key=lambda d: d.path)
    corpus_tokens = sum(d.tokens for d in ordered)
    floor = safe_minimum(min_cacheable_tokens)
    total = instructions_tokens + corpus_tokens
    if not ordered:
        return Plan((), instructions_tokens, min_cacheable_tokens, False, "the corpus is empty")
    if total < floor:
        block = Block(tuple(d.path for d in ordered), corpus_tokens, total, None)
        note = (
            f"the corpus is {total:,} tokens, below the {min_cacheable_tokens:,}-token minimum "
            "this model can cache: it is sent uncached with every question"
        )
        return Plan((block,), instructions_tokens, min_cacheable_tokens, False, note)

    # As many blocks as fit: each block boundary must leave a prefix above the floor.
    count = max(1, min(max_breakpoints, len(ordered), total // floor))
    blocks: list[Block] = []
    current: list[PlannedDocument] = []
    prefix = instructions_tokens
    for index, doc in enumerate(ordered):
        current.append(doc)
        prefix += doc.tokens
        remaining_docs = len(ordered) - index - 1
        target = instructions_tokens + corpus_tokens * (len(blocks) + 1) / count
        boundary = len(blocks) < count - 1 and prefix >= max(floor, target) and remaining_docs
        if boundary or remaining_docs == 0:
            tokens = sum(d.tokens for d in current)
            blocks.append(Block(tuple(d.path for d in current), tokens, prefix, ttl))
            current = []
    note = (
        f"{len(blocks)} cached block(s), every breakpoint above the "
        f"{min_cacheable_tokens:,}-token minimum"
    )
    return Plan(tuple(blocks), instructions_tokens, min_cacheable_tokens, True, note)
