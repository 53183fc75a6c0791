"""Staged builds: writing a shard's cached prefix a slice per request. Pure.

The API counts cache writes and uncached input toward the input-tokens-per-minute limit
(ITPM), but not cache reads (on every shipped model class). A request whose uncached part
is over the limit can never pass, so a prefix larger than the limit is written in slices:
each request reads the prefix through the previous slice's end (a breakpoint on it) and
writes the next slice (a breakpoint on its end), with `max_tokens: 0`.

Each slice fits the capacity with a margin (`slice_capacity`: the rest is for the
request's own text and for token estimates that fall short); every slice end is above the
model's minimum cacheable length; and the layout's anchors (plan/breakpoints.py) are among
the slice ends, so that after the build a question reads the whole prefix through the
last anchor, and after an edit the earlier anchors' entries are there to read through.
Slices are as long as they may be: the fewest requests, each waiting for the bucket to
hold its slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .layout import Block, Plan, safe_minimum

# The share of the ITPM capacity one slice may write: the rest covers token estimates
# that fall short (a local estimate is calibrated, not exact).
SLICE_SHARE = 0.85
# What a build request carries beyond its slice: the warming text after the last
# breakpoint, marker blocks and framing.
REQUEST_ALLOWANCE = 256
# Breakpoints a slice's request may write: the first reads nothing and has all four; a
# later one marks the end it reads through and keeps one for an earlier anchor it
# refreshes (a long build would let it lapse), which leaves two.
FIRST_WRITES = 4
LATER_WRITES = 2


def slice_capacity(input_tokens_per_minute: int) -> int:
    """The most tokens one slice may write under an ITPM limit."""
    return max(0, int(input_tokens_per_minute * SLICE_SHARE) - REQUEST_ALLOWANCE)


@dataclass(frozen=True)
class Slice:
    end: int  # position of the document that ends it
    tokens: int  # what writing it costs of the input bucket
    prefix_tokens: int  # the prompt through its end, instructions included
    anchors: tuple[int, ...] = ()  # the layout's anchors inside it, written with it


@dataclass(frozen=True)
class Unbuildable:
    """Why a prefix cannot be written under the capacity: a document (or the instructions
    with the first documents up to the minimum cacheable length) larger than a slice."""

    position: int  # the document that does not fit (-1: the first cacheable prefix)
    tokens: int
    capacity: int


def prefix_tokens(plan: Plan) -> list[int]:
    """The prompt through each document, instructions included."""
    running = plan.instructions_tokens
    out = []
    for size in plan.sizes:
        running += size
        out.append(running)
    return out


def plan_slices(
    prefix: Sequence[int],
    anchors: Sequence[int],
    *,
    capacity: int,
    minimum: int,
    start: int = -1,
    writes: int = LATER_WRITES,
) -> list[Slice] | Unbuildable:
    """The slices that write the prefix after position `start` (-1: nothing cached yet)
    through the last anchor, each at most `capacity` tokens and never ending below
    `minimum` tokens of prompt. Every anchor after `start` is a slice's end or inside one
    (its request writes it too); a slice writes at most `writes` breakpoints, its end
    included (the first, which reads nothing, `FIRST_WRITES`).

    `prefix[i]`: the prompt through document i, the instructions included (they are
    written with the first slice)."""
    if not anchors:
        return []
    last = anchors[-1]
    slices: list[Slice] = []
    done = prefix[start] if start >= 0 else 0
    position = start
    while position < last:
        ahead = [a for a in anchors if a > position]
        limit = FIRST_WRITES if position < 0 else writes
        goal = ahead[min(limit, len(ahead)) - 1]  # past it, too many breakpoints to write
        end = position
        while end < goal and prefix[end + 1] - done <= capacity:
            end += 1
        while end > position and prefix[end] < minimum:
            end -= 1  # no cache entry below the minimum: the slice must reach it
        if end == position:
            first = position + 1
            if prefix[first] - done > capacity:
                return Unbuildable(first, prefix[first] - done, capacity)
            # Each document fits, but the first cacheable prefix does not.
            reach = next((i for i in range(first, last + 1) if prefix[i] >= minimum), last)
            return Unbuildable(-1, prefix[reach] - done, capacity)
        inner = tuple(a for a in ahead if a < end)
        slices.append(Slice(end, prefix[end] - done, prefix[end], inner))
        done, position = prefix[end], end
    return slices


def refined(plan: Plan, ends: Sequence[int]) -> Plan:
    """`plan` with its blocks cut at `ends` as well: the same documents and anchors, more
    block ends. An entry's identity depends only on the prefix it holds, so the refined
    plan's anchors that were the plan's have the same entries."""
    if not plan.cached:
        return plan
    cut = set(ends)
    blocks: list[Block] = []
    position = 0
    running = plan.instructions_tokens
    for block in plan.blocks:
        start = 0
        for i in range(len(block.paths)):
            running += block.sizes[i]
            if position + i in cut or i == len(block.paths) - 1:
                blocks.append(
                    Block(
                        block.paths[start : i + 1], block.keys[start : i + 1],
                        sum(block.sizes[start : i + 1]), running, block.ttl,
                        block.sizes[start : i + 1],
                    )
                )  # fmt: skip
                start = i + 1
        position += len(block.paths)
    return replace(plan, blocks=tuple(blocks))


@dataclass(frozen=True)
class Staging:
    """A shard's build: the plan cut at every slice end, and the slices still to write."""

    plan: Plan  # `refined` at the slice ends
    ends: tuple[int, ...]  # every slice end of the whole build, ascending
    todo: tuple[Slice, ...]  # those still to write, from the furthest live entry on

    @property
    def done(self) -> int:
        return len(self.ends) - len(self.todo)

    @property
    def remaining_tokens(self) -> int:
        return sum(s.tokens for s in self.todo)


def stage(plan: Plan, capacity: int, *, live: Sequence[int] = ()) -> Staging | Unbuildable:
    """The build of `plan` under `capacity` tokens per slice, resuming after the furthest
    of `live` (positions whose entries are alive). The whole build's slice ends are those
    of a build from scratch, so that progress is counted against the same slices after a
    restart; the slices still to write start at the furthest live entry."""
    prefix = prefix_tokens(plan)
    anchors = plan.anchors
    floor = safe_minimum(plan.min_cacheable_tokens)
    start = max((p for p in live if anchors and p <= anchors[-1]), default=-1)
    todo = plan_slices(prefix, anchors, capacity=capacity, minimum=floor, start=start)
    if isinstance(todo, Unbuildable):
        return todo
    whole = plan_slices(prefix, anchors, capacity=capacity, minimum=floor) if start >= 0 else todo
    before = [s.end for s in whole if s.end < start] if isinstance(whole, list) else []
    ends = sorted({*before, *([start] if start >= 0 else []), *(s.end for s in todo)})
    return Staging(refined(plan, ends), tuple(ends), tuple(todo))


def build_seconds(
    todo: Sequence[int], *, input_tokens_per_minute: int, available: float, prefill: float
) -> float:
    """About how long writing slices of `todo` tokens takes: each waits until the input
    bucket (refilling at the limit per minute, holding `available` now) has its tokens,
    then its prefill (`prefill` tokens per second)."""
    rate = input_tokens_per_minute / 60.0
    level, seconds = available, 0.0
    for tokens in todo:
        wait = max(0.0, (tokens - level) / rate)
        prefill_time = tokens / prefill
        seconds += wait + prefill_time
        level = min(float(input_tokens_per_minute), level + (wait + prefill_time) * rate) - tokens
    return seconds


def about(seconds: float) -> str:
    """A duration as a person says it: "under a minute", "about 3 min"."""
    if seconds < 60:
        return "under a minute" if seconds >= 1 else "a moment"
    return f"about {math.ceil(seconds / 60)} min"
