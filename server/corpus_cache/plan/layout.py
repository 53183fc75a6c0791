"""The layout: shards, each an ordered list of cached blocks ending in anchors. Pure.

Documents are ordered most stable first (stability.py); block ends (anchors: cache entries
worth keeping alive) are placed where the expected cost of rewrites is least
(breakpoints.py), every anchor's prefix above the model's minimum. A request marks at most
three anchors with cache_control, one of the API's four breakpoints staying free for
conversations (anchors.py chooses which). A corpus over the budget is split into shards
(shards.py). Given the previous layout, an edit moves at most the edited document and
keeps every block before it, so it invalidates only the blocks from its own onward. Same
inputs, same layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .anchors import MAX_ANCHORS
from .breakpoints import choose_cuts
from .shards import assign_shards
from .stability import DocInfo, is_hot, rates, stability_order

Ttl = Literal["5m", "1h"]

MAX_CORPUS_BREAKPOINTS = 3  # per request; the fourth is for conversations


@dataclass(frozen=True)
class Block:
    paths: tuple[str, ...]
    keys: tuple[str, ...]
    tokens: int
    prefix_tokens: int  # the prompt up to this block's breakpoint, instructions included
    ttl: Ttl | None  # None: not cached (the corpus is below the minimum)


@dataclass(frozen=True)
class Plan:
    """One shard's blocks, in prompt order."""

    blocks: tuple[Block, ...]
    instructions_tokens: int
    min_cacheable_tokens: int
    cached: bool
    note: str
    tail_start: int = 0  # index in `order` of the first hot (recently edited) document

    @property
    def total_tokens(self) -> int:
        return self.instructions_tokens + sum(block.tokens for block in self.blocks)

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(path for block in self.blocks for path in block.paths)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for block in self.blocks for key in block.keys)

    @property
    def anchors(self) -> tuple[int, ...]:
        """Positions (document indices) of the block ends kept in the cache, ascending."""
        if not self.cached:
            return ()
        ends, position = [], -1
        for block in self.blocks:
            position += len(block.paths)
            ends.append(position)
        return tuple(ends)

    @property
    def cuts(self) -> tuple[int, ...]:
        """Indices of the documents that end a block, except the last."""
        ends, position = [], -1
        for block in self.blocks[:-1]:
            position += len(block.paths)
            ends.append(position)
        return tuple(ends)


@dataclass(frozen=True)
class Shard:
    number: int
    plan: Plan
    corpus_tokens: int


@dataclass(frozen=True)
class Layout:
    shards: tuple[Shard, ...]
    budget_tokens: int
    oversized: tuple[str, ...]  # documents too large for the budget on their own

    @property
    def total_tokens(self) -> int:
        return sum(s.corpus_tokens for s in self.shards)

    def shard_of(self) -> dict[str, int]:
        return {path: s.number for s in self.shards for path in s.plan.order}


def safe_minimum(min_cacheable_tokens: int) -> int:
    """count_tokens is an estimate: keep a margin so a breakpoint is never just short."""
    return int(min_cacheable_tokens * 1.05) + 32


def _first_change(order: Sequence[DocInfo], previous: Plan | None) -> int:
    if previous is None:
        return 0
    before = list(zip(previous.order, previous.keys, strict=True))
    for i, doc in enumerate(order):
        if i >= len(before) or before[i] != (doc.path, doc.key):
            return i
    return len(order)


def plan_shard(
    docs: Sequence[DocInfo],
    *,
    min_cacheable_tokens: int,
    instructions_tokens: int,
    now: float,
    previous: Plan | None = None,
    max_anchors: int = MAX_ANCHORS,
    ttl: Ttl = "5m",
) -> Plan:
    order = stability_order(
        docs,
        now,
        tuple(zip(previous.order, previous.keys, strict=True)) if previous else (),
        previous.tail_start if previous else 0,
    )
    hot_from = next((i for i, d in enumerate(order) if is_hot(d, now)), len(order))
    total = instructions_tokens + sum(d.tokens for d in order)
    floor = safe_minimum(min_cacheable_tokens)
    if not order:
        return Plan((), instructions_tokens, min_cacheable_tokens, False, "the corpus is empty")
    if total < floor:
        block = Block(
            tuple(d.path for d in order), tuple(d.key for d in order), total - instructions_tokens,
            total, None,
        )  # fmt: skip
        note = (
            f"the corpus is {total:,} tokens, below the {min_cacheable_tokens:,}-token minimum "
            "this model can cache: it is sent uncached with every question"
        )
        return Plan((block,), instructions_tokens, min_cacheable_tokens, False, note, hot_from)

    prefix: list[int] = []
    running = instructions_tokens
    for doc in order:
        running += doc.tokens
        prefix.append(running)
    changed = _first_change(order, previous)
    # The last unchanged anchor is what the next request reads through: keep it. Earlier
    # ones buy nothing more now, so they are free to move where edits happen.
    unchanged = [c for c in (previous.cuts if previous else ()) if c < changed]
    cuts = choose_cuts(
        prefix,
        rates(order, now),
        minimum=floor,
        cuts=max_anchors - 1,
        must=unchanged[-1] if unchanged else None,
        hot_from=hot_from,
    )
    blocks: list[Block] = []
    start = 0
    for end in [*cuts, len(order) - 1]:
        members = order[start : end + 1]
        blocks.append(
            Block(
                tuple(d.path for d in members), tuple(d.key for d in members),
                sum(d.tokens for d in members), prefix[end], ttl,
            )
        )  # fmt: skip
        start = end + 1
    note = (
        f"{len(blocks)} cached block(s), every breakpoint above the "
        f"{min_cacheable_tokens:,}-token minimum"
    )
    return Plan(tuple(blocks), instructions_tokens, min_cacheable_tokens, True, note, hot_from)


def plan_corpus(
    docs: Sequence[DocInfo],
    *,
    min_cacheable_tokens: int,
    instructions_tokens: int,
    budget_tokens: int,
    now: float,
    previous: Layout | None = None,
    ttl: Ttl = "5m",
) -> Layout:
    """Shards within the budget, each laid out for the fewest expected rewrites."""
    previous_shards = previous.shard_of() if previous else None
    assignment, oversized = assign_shards(
        docs, budget=budget_tokens, overhead=instructions_tokens, previous=previous_shards
    )
    previous_plans = {s.number: s.plan for s in previous.shards} if previous else {}
    members: dict[int, list[DocInfo]] = {}
    for doc in docs:
        if doc.path in assignment:
            members.setdefault(assignment[doc.path], []).append(doc)
    shards = tuple(
        Shard(
            number,
            plan_shard(
                members[number],
                min_cacheable_tokens=min_cacheable_tokens,
                instructions_tokens=instructions_tokens,
                now=now,
                previous=previous_plans.get(number),
                ttl=ttl,
            ),
            sum(d.tokens for d in members[number]),
        )
        for number in sorted(members)
    )
    if not shards:
        empty = plan_shard(
            [], min_cacheable_tokens=min_cacheable_tokens,
            instructions_tokens=instructions_tokens, now=now,
        )  # fmt: skip
        shards = (Shard(0, empty, 0),)
    return Layout(shards, budget_tokens, tuple(oversized))
