"""The layout: shards, each an ordered list of cached blocks ending in anchors. Pure.

Documents are ordered most stable first (stability.py); block ends (anchors: cache entries
worth keeping alive) are placed where the expected cost of rewrites is least
(breakpoints.py), every anchor's prefix above the model's minimum. A request marks at most
four anchors with cache_control, the API's limit, or three in a session, whose fourth
breakpoint caches the conversation (anchors.py chooses which). A corpus over the budget
is split into shards (shards.py). Given the previous layout, an edit moves at most the
edited document and keeps every block before it, so it invalidates only the blocks from
its own onward. Same inputs, same layout.

Superseded copies. A cold document's first edit would rewrite everything after its old
place, half the corpus on average, while the cost the edit cannot avoid is the document
itself. So while the cache before the edit is alive, the edited document's old copy stays
where it was, marked superseded (the request tells Claude a later copy with the same title
replaces it), and the new version joins the tail: the edit writes one document, and each
later question reads the old copy at the cache-read price. Old copies go when the prefix
holding them lapses (the next write is full anyway), when they outgrow a share of the
shard, or at once for a deleted or excluded file, whose text is never sent again, and for
an edit that removed text (`dropped`: the engine says which, unless told to keep old
copies), so that removed text is not sent again either: the prefix from its place is
written again, a rewrite being cheaper than a leak.

In the hot tail an edit moves its document to the end: the documents after it are
written again, but they are few and likely to change anyway. After a break, though, only
the 1-hour entries live (the stable part's and the tail's end, see markers.py), and moving
an edited tail document would write again every unchanged one back to the stable part.
Then, if they outweigh it, its old copy stays and the new version follows, as for a cold
document; one old copy in the tail at most, so that they do not pile up.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ..models.pricing import Ttl
from ..wording import plural
from .anchors import MAX_ANCHORS
from .breakpoints import choose_cuts
from .shards import assign_shards
from .stability import DocInfo, is_hot, rates, stability_order

MAX_BREAKPOINTS = 4  # per request, the API's limit
SESSION_CORPUS_BREAKPOINTS = 3  # in a session, the fourth caches the conversation
MAX_SUPERSEDED_SHARE = 0.25  # old copies kept, as a share of the shard's current tokens
COLD_WEIGHT = 0.05  # how much a cold document's edits count in placing cuts (see plan_shard)


@dataclass(frozen=True)
class Block:
    paths: tuple[str, ...]
    keys: tuple[str, ...]
    tokens: int
    prefix_tokens: int  # the prompt up to this block's breakpoint, instructions included
    ttl: Ttl | None  # None: not cached (the corpus is below the minimum)
    sizes: tuple[int, ...] = ()  # each document's tokens


@dataclass(frozen=True)
class Plan:
    """One shard's blocks, in prompt order."""

    blocks: tuple[Block, ...]
    instructions_tokens: int
    min_cacheable_tokens: int
    cached: bool
    note: str
    tail_start: int = 0  # index in `order` of the first hot (recently edited) document
    superseded: frozenset[int] = frozenset()  # positions holding an edited document's old copy
    floor: int = 0  # the least prefix a breakpoint could end, as planned (safe_minimum)

    @property
    def superseded_tokens(self) -> int:
        sizes = self.sizes
        return sum(sizes[i] for i in self.superseded)

    # A plan never changes: what is derived from its blocks is made once (a corpus's
    # 10,000 paths are read on every replan, per shard).
    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(size for block in self.blocks for size in block.sizes)

    @property
    def total_tokens(self) -> int:
        return self.instructions_tokens + sum(block.tokens for block in self.blocks)

    @functools.cached_property
    def order(self) -> tuple[str, ...]:
        return tuple(path for block in self.blocks for path in block.paths)

    @functools.cached_property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for block in self.blocks for key in block.keys)

    @functools.cached_property
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
    def stable_anchor(self) -> int | None:
        """The anchor ending the stable part, before the hot tail (the corpus's end when
        every document is hot; None when nothing is cached). It is what a question reads
        through after the tail is edited, and where an upgrade's marker goes."""
        anchors = self.anchors
        stable = [a for a in anchors if a < self.tail_start]
        return stable[-1] if stable else (anchors[-1] if anchors else None)

    def tokens_through(self, anchor: int) -> int:
        """The prefix tokens through `anchor`'s block."""
        return self.blocks[self.anchors.index(anchor)].prefix_tokens

    @property
    def stable_tokens(self) -> int:
        """Tokens through the stable anchor (where an upgrade's marker goes): the whole
        corpus when every document is hot; 0 when nothing is cached."""
        stable = self.stable_anchor
        return 0 if stable is None else self.tokens_through(stable)

    @property
    def edit_tokens(self) -> float:
        """Tokens an edit to the tail rewrites on average: the edited document moves to
        the end, so with k documents in the tail, (k + 1) / 2 of them."""
        sizes = self.sizes[self.tail_start :]
        if not sizes:
            return 0.0
        return (len(sizes) + 1) / 2 * sum(sizes) / len(sizes)

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

    def shard_of(self) -> Mapping[str, int]:
        return self._shard_of

    @functools.cached_property
    def _shard_of(self) -> dict[str, int]:
        # Made once per layout: routing and the next plan read it, for 10,000 paths.
        return {path: s.number for s in self.shards for path in s.plan.order}


def safe_minimum(
    min_cacheable_tokens: int, instructions_tokens: int = 0, estimate_error: float = 0.0
) -> int:
    """The least prefix a breakpoint may end, as planned. count_tokens is an estimate: keep
    a margin so a breakpoint is never just short. `estimate_error`: the relative bound of
    the documents' figures that are local estimates (api/estimate.py), planned at the upper
    end of their bound; a prefix planned at P then holds at least I + (P - I)(1 - e)/(1 + e)
    tokens (I, the instructions, is counted), so the floor rises until that clears it."""
    floor = int(min_cacheable_tokens * 1.05) + 32
    if estimate_error <= 0 or floor <= instructions_tokens:
        return floor
    error = min(estimate_error, 0.9)
    spread = (1 + error) / (1 - error)
    return instructions_tokens + math.ceil((floor - instructions_tokens) * spread)


def shared_prefix(before: Sequence[tuple[str, str]], after: Sequence[tuple[str, str]]) -> int:
    """How many leading (path, key) pairs two document orders share."""
    return next(
        (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b),
        min(len(before), len(after)),
    )


def _first_change(order: Sequence[DocInfo], previous: Plan | None) -> int:
    if previous is None:
        return 0
    return shared_prefix(
        list(zip(previous.order, previous.keys, strict=True)), [(d.path, d.key) for d in order]
    )


def _kept_prefix(
    docs: Sequence[DocInfo],
    previous: Plan,
    live: Sequence[int],
    room: int,
    dropped: Collection[tuple[str, str]] = frozenset(),
) -> list[DocInfo]:
    """The previous plan's first documents, as they were, up to where its live cache ends:
    unchanged documents, and the old copies of edited ones worth carrying, within `room`
    tokens. Stops at the first deleted or excluded document, and at the first old copy in
    `dropped` (by path and key: it holds text the file no longer has).

    Worth carrying: a stable document with more than its own size after it (moving it
    would rewrite more than it costs). In the hot tail an edit moves its document to the
    end, unless the tail before it is no longer cached (after a break, only the 1-hour
    entries through the stable part and the tail's end live): then moving it would also
    write the unchanged documents back to the last live entry; if they outweigh it, the
    tail's one old copy is carried instead. An old copy last in the kept prefix is carried
    only for the live entry ending at it, when that saves writing more than its size."""
    current = {d.path: d for d in docs}
    alive = set(live)
    warm_through = max(live, default=-1) + 1
    entries = list(zip(previous.order, previous.keys, previous.sizes, strict=True))[:warm_through]
    after = [0] * (len(entries) + 1)
    for i in range(len(entries) - 1, -1, -1):
        after[i] = after[i + 1] + entries[i][2]
    kept: list[DocInfo] = []
    placed: set[str] = set()  # documents whose current copy is already in the prefix
    carried = 0
    uncached = 0  # unchanged tokens kept since the last live entry: a move would rewrite them
    # Position of a tail's old copy -> the unchanged tokens before it back to the last live
    # entry, which carrying it saves writing again.
    saved: dict[int, int] = {}
    for i, (path, key, size) in enumerate(entries):
        doc = current.get(path)
        if doc is None or path in placed:
            break
        if doc.key == key:
            kept.append(doc)
            placed.add(path)
            uncached += size
        else:
            if (path, key) in dropped:
                break  # it would send text removed from the file: never kept
            in_tail = i >= previous.tail_start
            if in_tail:
                tail_copies = sum(1 for d in kept[previous.tail_start :] if d.superseded)
                saves = uncached + after[i + 1]
                if tail_copies or not uncached or saves <= size or carried + size > room:
                    break  # its neighbours are cached, or another copy is carried: move it
            elif after[i + 1] <= size or carried + size > room:
                break  # little after it, or no room: move it instead
            saved[i] = uncached if in_tail else 0
            kept.append(DocInfo(path, size, key, 0.0, first_seen=doc.first_seen, superseded=True))
            carried += size
        if i in alive:
            uncached = 0
    while kept and kept[-1].superseded:
        position = len(kept) - 1  # kept holds the previous plan's entries from the first
        if position in alive and saved[position] > kept[-1].tokens:
            break  # the live entry ending at it saves writing more than it costs
        kept.pop()  # otherwise an old copy is only worth carrying for what follows it
    return kept


def _stands(
    previous: Plan,
    docs: Sequence[DocInfo],
    now: float,
    *,
    ttl: Ttl,
    max_anchors: int,
    min_cacheable_tokens: int,
    instructions_tokens: int,
    floor: int,
) -> bool:
    """Whether `previous` is the plan of `docs` as they are now: the same documents (path,
    content, tokens), each on the same side of its hot tail, no old copy kept, planned
    with the same settings."""
    if previous.superseded or not _settings_stand(
        previous, ttl=ttl, max_anchors=max_anchors,
        min_cacheable_tokens=min_cacheable_tokens, instructions_tokens=instructions_tokens,
        floor=floor,
    ):  # fmt: skip
        return False
    order, keys, sizes = previous.order, previous.keys, previous.sizes
    if len(order) != len(docs):
        return False
    position = {path: i for i, path in enumerate(order)}
    tail = previous.tail_start
    for doc in docs:
        i = position.get(doc.path)
        if (
            i is None
            or keys[i] != doc.key
            or sizes[i] != doc.tokens
            or (i >= tail) != is_hot(doc, now)
        ):
            return False
    return True


def _settings_stand(
    previous: Plan, *, ttl: Ttl, max_anchors: int, min_cacheable_tokens: int,
    instructions_tokens: int, floor: int,
) -> bool:  # fmt: skip
    """Whether `previous` was planned with these settings (the floor moves with how far
    the documents' token figures are estimates)."""
    return (
        previous.floor == floor
        and previous.instructions_tokens == instructions_tokens
        and previous.min_cacheable_tokens == min_cacheable_tokens
        and len(previous.blocks) <= max_anchors
        and not (previous.cached and any(block.ttl != ttl for block in previous.blocks))
    )


def plan_shard(
    docs: Sequence[DocInfo],
    *,
    min_cacheable_tokens: int,
    instructions_tokens: int,
    now: float,
    previous: Plan | None = None,
    max_anchors: int = MAX_ANCHORS,
    ttl: Ttl = "5m",
    live: Sequence[int] = (),
    budget_tokens: int | None = None,
    dropped: Collection[tuple[str, str]] = frozenset(),
    estimate_error: float = 0.0,
) -> Plan:
    """`live`: the previous plan's anchors whose cache entries are alive, those most worth
    keeping first. The prefix through the furthest is kept as it was, edited documents'
    old copies included (see the module's note), and the first few stay anchors.
    `dropped`: old copies, by (path, key), never to keep (they hold removed text).
    `estimate_error`: see `safe_minimum`.

    A shard whose documents are those `previous` was planned from, each as hot or cold as
    it was then, keeps that plan: nothing in it changed, so it has nothing to rewrite, and
    an edit elsewhere in the corpus does not move its cuts."""
    floor = safe_minimum(min_cacheable_tokens, instructions_tokens, estimate_error)
    if previous is not None and _stands(
        previous, docs, now, ttl=ttl, max_anchors=max_anchors,
        min_cacheable_tokens=min_cacheable_tokens, instructions_tokens=instructions_tokens,
        floor=floor,
    ):  # fmt: skip
        return previous
    kept: list[DocInfo] = []
    if previous is not None and previous.cached and live:
        room = int(MAX_SUPERSEDED_SHARE * sum(d.tokens for d in docs))
        if budget_tokens is not None:
            room = min(room, budget_tokens - instructions_tokens - sum(d.tokens for d in docs))
        kept = _kept_prefix(docs, previous, live, room, dropped)
    placed = {d.path for d in kept if not d.superseded}
    order = kept + stability_order(
        [d for d in docs if d.path not in placed],
        now,
        tuple(zip(previous.order, previous.keys, strict=True)) if previous else (),
        previous.tail_start if previous else 0,
    )
    superseded = frozenset(i for i, d in enumerate(order) if d.superseded)
    hot_from = next((i for i, d in enumerate(order) if is_hot(d, now)), len(order))
    total = instructions_tokens + sum(d.tokens for d in order)
    if not order:
        return Plan(
            (), instructions_tokens, min_cacheable_tokens, False, "the corpus is empty",
            floor=floor,
        )  # fmt: skip
    if total < floor:
        block = Block(
            tuple(d.path for d in order), tuple(d.key for d in order), total - instructions_tokens,
            total, None, tuple(d.tokens for d in order),
        )  # fmt: skip
        note = (
            f"the corpus is {total:,} tokens, below the {min_cacheable_tokens:,}-token minimum "
            "this model can cache: it is sent uncached with every question"
        )
        return Plan(
            (block,), instructions_tokens, min_cacheable_tokens, False, note, hot_from,
            superseded, floor,
        )  # fmt: skip

    prefix: list[int] = []
    running = instructions_tokens
    for doc in order:
        running += doc.tokens
        prefix.append(running)
    changed = _first_change(order, previous)
    # The last unchanged anchor is what the next request reads through: keep it, and the
    # live ones worth most. Others buy nothing more now: they may move where edits happen.
    unchanged = [
        a for a in (previous.anchors if previous else ()) if a < min(changed, len(order) - 1)
    ]
    keep = [a for a in live if a < min(changed, len(order) - 1)][: max_anchors - 2]
    keep += unchanged[-1:]
    current_rates = iter(rates([d for d in order if not d.superseded], now))
    # Old copies never change: they are dropped, not edited. A cold document's edit, while
    # the cache is alive, leaves its old copy in place and costs about its own size
    # wherever the cuts are, so cuts are placed for the hot tail's edits above all.
    order_rates = [
        0.0 if d.superseded else next(current_rates) * (1.0 if is_hot(d, now) else COLD_WEIGHT)
        for d in order
    ]
    cuts = choose_cuts(
        prefix,
        order_rates,
        minimum=floor,
        cuts=max_anchors - 1,
        must=keep,
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
                tuple(d.tokens for d in members),
            )
        )  # fmt: skip
        start = end + 1
    note = (
        f"{plural(len(blocks), 'cached block')}, every breakpoint above the "
        f"{min_cacheable_tokens:,}-token minimum"
    )
    if superseded:
        their = "keeps its" if len(superseded) == 1 else "keep their"
        note += (
            f"; {plural(len(superseded), 'edited document')} {their} old copy in the cached "
            f"prefix ({sum(order[i].tokens for i in superseded):,} tokens) until it is next "
            "rewritten"
        )
    return Plan(
        tuple(blocks), instructions_tokens, min_cacheable_tokens, True, note, hot_from,
        superseded, floor,
    )  # fmt: skip


def plan_corpus(
    docs: Sequence[DocInfo],
    *,
    min_cacheable_tokens: int,
    instructions_tokens: int,
    budget_tokens: int,
    now: float,
    previous: Layout | None = None,
    ttl: Ttl = "5m",
    live: Mapping[int, Sequence[int]] | None = None,
    dropped: Collection[tuple[str, str]] = frozenset(),
    estimate_error: float = 0.0,
    changed: Collection[str] | None = None,
) -> Layout:
    """Shards within the budget, each laid out for the fewest expected rewrites. `live`:
    per shard, the previous plan's anchors whose entries are alive; `dropped`: old copies
    never to keep (see `plan_shard`). `estimate_error`: the relative error bound of the
    documents' figures that are estimates, given at the upper end of that bound (so that
    a shard within the budget as planned is within it in fact): every breakpoint clears
    the minimum even at the lower end (`safe_minimum`). `changed`, if known: the paths of
    the documents added, removed, or whose content or tokens changed since `previous` was
    planned; a shard that holds none of them, and the same documents as before, is
    checked only for a document turning cold (its plan stands otherwise). The layout is
    the same with or without it."""
    previous_shards = previous.shard_of() if previous else None
    assignment, oversized, kept = assign_shards(
        docs, budget=budget_tokens, overhead=instructions_tokens, previous=previous_shards
    )
    previous_plans = {s.number: s.plan for s in previous.shards} if previous else {}
    members: dict[int, list[DocInfo]] = {}
    for doc in docs:
        if doc.path in assignment:
            members.setdefault(assignment[doc.path], []).append(doc)
    floor = safe_minimum(min_cacheable_tokens, instructions_tokens, estimate_error)
    touched: set[int | None] = set()
    if changed is not None:
        touched = {assignment.get(p) for p in changed}
        touched |= {(previous_shards or {}).get(p) for p in changed}

    def plan(number: int) -> Plan:
        before = previous_plans.get(number)
        if (
            changed is not None
            and before is not None
            and number not in touched
            and _untouched(
                before, members[number], now, None if kept else (number, previous_shards or {})
            )
            and _settings_stand(
                before, ttl=ttl, max_anchors=MAX_ANCHORS,
                min_cacheable_tokens=min_cacheable_tokens,
                instructions_tokens=instructions_tokens,
                floor=floor,
            )
        ):  # fmt: skip
            return before
        return plan_shard(
            members[number],
            min_cacheable_tokens=min_cacheable_tokens,
            instructions_tokens=instructions_tokens,
            now=now,
            previous=before,
            ttl=ttl,
            live=(live or {}).get(number, ()),
            budget_tokens=budget_tokens,
            dropped=dropped,
            estimate_error=estimate_error,
        )

    previous_shard = {s.number: s for s in previous.shards} if previous else {}

    def shard(number: int) -> Shard:
        planned = plan(number)
        before = previous_shard.get(number)
        if before is not None and before.plan is planned:
            return before  # the same documents, with the same tokens
        return Shard(number, planned, sum(d.tokens for d in members[number]))

    shards = tuple(shard(number) for number in sorted(members))
    if not shards:
        empty = plan_shard(
            [], min_cacheable_tokens=min_cacheable_tokens,
            instructions_tokens=instructions_tokens, now=now,
        )  # fmt: skip
        shards = (Shard(0, empty, 0),)
    return Layout(shards, budget_tokens, tuple(oversized))


def _untouched(
    before: Plan,
    docs: Sequence[DocInfo],
    now: float,
    moved: tuple[int, Mapping[str, int]] | None,
) -> bool:
    """Whether a shard none of whose documents changed holds the documents of its plan
    `before`, each on the same side of its hot tail (what `_stands` checks, knowing that
    the documents' contents and tokens are as they were). `moved`, when documents may have
    changed shards: the shard's number and the previous shard of each path."""
    order = before.order
    if before.superseded or len(docs) != len(order):
        return False
    if moved is not None and any(moved[1].get(doc.path) != moved[0] for doc in docs):
        return False  # another came in, in place of one that left
    hot = [doc for doc in docs if is_hot(doc, now)]
    tail = set(order[before.tail_start :])
    return len(hot) == len(tail) and all(doc.path in tail for doc in hot)
