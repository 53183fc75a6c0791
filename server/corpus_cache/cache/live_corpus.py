"""The corpus a question is answered against (`Corpus`), and what goes with its layout:
the identity of each anchor's cache entry, the old copies of edited documents the layout
keeps, and the marker blocks it carries. Pure: the engine decides when to swap one in."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from corpus_cache.api.tokens import content_key
from corpus_cache.cache import markers as marker_blocks
from corpus_cache.corpus.documents import Document, Snapshot
from corpus_cache.corpus.search import SearchIndex
from corpus_cache.plan.layout import Layout, Plan, Shard


@dataclass(frozen=True)
class Corpus:
    """Everything a question is answered against; replaced whole, never changed."""

    snapshot: Snapshot
    tokens: dict[str, int]
    layout: Layout
    index: SearchIndex = field(repr=False)
    # Per shard: anchor position -> identity of the cache entry its prefix would have.
    anchor_ids: dict[int, dict[int, str]] = field(default_factory=dict, repr=False)
    # Old copies of edited documents the layout keeps in a live cached prefix, by (path, key).
    superseded: dict[tuple[str, str], Document] = field(default_factory=dict, repr=False)
    # Per shard: anchor position -> marker blocks after that document, which turn a live
    # cached prefix into a 1-hour entry (see markers.py).
    markers: dict[int, dict[int, int]] = field(default_factory=dict, repr=False)
    # Documents whose figure in `tokens` is the upper end of a local estimate, not a count:
    # their point estimate, which is what to show ("~1,200 tokens, estimated").
    estimated: dict[str, int] = field(default_factory=dict, repr=False)
    estimate_error: float = 0.0  # the estimates' relative error bound (api/estimate.py)

    @property
    def corpus_tokens(self) -> int:
        return sum(self.tokens.values())

    @property
    def shown_tokens(self) -> int:
        """The corpus's tokens as shown: counts, and the point estimates of the rest."""
        return sum(self.estimated.get(path, n) for path, n in self.tokens.items())

    def shown(self, path: str) -> int:
        """A document's tokens as shown (its point estimate if it was not counted)."""
        return self.estimated.get(path, self.tokens.get(path, 0))

    @property
    def shards(self) -> tuple[Shard, ...]:
        return self.layout.shards

    def shard(self, number: int) -> Shard:
        return next(s for s in self.layout.shards if s.number == number)


def shown_sizes(corpus: Corpus, shard: Shard) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Each position of `shard`'s order: its tokens as shown (a point estimate where the
    plan holds an estimate's upper end), and whether that figure is an estimate."""
    plan = shard.plan
    sizes: list[int] = []
    flags: list[bool] = []
    for position, (path, size) in enumerate(zip(plan.order, plan.sizes, strict=True)):
        estimate = None if position in plan.superseded else corpus.estimated.get(path)
        sizes.append(size if estimate is None else estimate)
        flags.append(estimate is not None)
    return tuple(sizes), tuple(flags)


def with_entries(corpus: Corpus, previous: Corpus | None, model: str) -> Corpus:
    """`corpus` with what goes with its layout, planned after `previous`: the cache
    entries' identities, the old copies it keeps and the marker blocks it carries over."""
    layout = corpus.layout
    markers = marker_blocks.carried_in_layout(
        previous.layout if previous else None, layout, previous.markers if previous else {}
    )
    # A shard that kept its plan and markers keeps its entries' identities: after a save,
    # only the shard that holds it is hashed again.
    known: dict[int, dict[int, str]] = {}
    if previous is not None:
        plans = {shard.number: shard.plan for shard in previous.shards}
        known = {
            shard.number: previous.anchor_ids[shard.number]
            for shard in layout.shards
            if plans.get(shard.number) is shard.plan
            and previous.markers.get(shard.number, {}) == markers.get(shard.number, {})
            and shard.number in previous.anchor_ids
        }
    return replace(
        corpus, anchor_ids=marker_blocks.anchor_ids(layout, model, markers, known),
        superseded=_superseded(layout, previous), markers=markers,
    )  # fmt: skip


def removed_text(
    previous: Corpus,
    current: Mapping[str, Document],
    shards: Iterable[Shard] | None = None,
    paths: Collection[str] | None = None,
) -> frozenset[tuple[str, str]]:
    """The (path, key) of each copy `previous` sends (on `shards`, default all), current
    document or kept old copy, that holds a line the folder's current version of that path
    (`current`, by path) lacks, or whose file is gone: sending it again would send text
    removed from the folder. A copy whose every line is still in the file reveals nothing
    the current version does not. `paths`, if given: the only paths whose documents differ
    from `previous`'s (the others' copies were checked against the same text before)."""
    out: set[tuple[str, str]] = set()
    lines: dict[str, frozenset[str]] = {}
    for shard in previous.shards if shards is None else shards:
        plan = shard.plan
        for position, (path, key) in enumerate(zip(plan.order, plan.keys, strict=True)):
            if paths is not None and path not in paths:
                continue
            now = current.get(path)
            if now is not None and content_key(now) == key:
                continue
            if now is None:
                out.add((path, key))
                continue
            old = (
                previous.superseded.get((path, key))
                if position in plan.superseded
                else previous.snapshot.get(path)
            )
            if old is None:
                continue
            kept = lines.get(path)
            if kept is None:
                kept = lines[path] = frozenset(now.text.splitlines())
            if not kept.issuperset(old.text.splitlines()):
                out.add((path, key))
    return frozenset(out)


def marked(corpus: Corpus, shard: int, markers: dict[int, int], model: str) -> Corpus:
    """`corpus` with `markers` for shard number `shard`, and the entry identities that
    follow: a marker block is part of every prefix after it."""
    every = {**corpus.markers, shard: markers}
    return replace(
        corpus, markers=every, anchor_ids=marker_blocks.anchor_ids(corpus.layout, model, every)
    )


def with_plan(corpus: Corpus, shard: int, plan: Plan, model: str) -> Corpus:
    """`corpus` with shard number `shard` laid out as `plan` (the same documents cut at more
    block ends: a staged build's, plan/staging.py), and its anchors' entry identities. The
    anchors the two plans share have the same identities: an entry is its prefix."""
    shards = tuple(replace(s, plan=plan) if s.number == shard else s for s in corpus.shards)
    layout = replace(corpus.layout, shards=shards)
    return replace(
        corpus, layout=layout, anchor_ids=marker_blocks.anchor_ids(layout, model, corpus.markers)
    )


def _superseded(layout: Layout, previous: Corpus | None) -> dict[tuple[str, str], Document]:
    """The old copies `layout` keeps, from the corpus it was planned after (they were that
    corpus's documents, or old copies it kept itself)."""
    kept: dict[tuple[str, str], Document] = {}
    if previous is None:
        return kept
    for shard in layout.shards:
        plan = shard.plan
        for position in plan.superseded:
            path, key = plan.order[position], plan.keys[position]
            doc = previous.snapshot.get(path)
            if doc is None or content_key(doc) != key:
                doc = previous.superseded.get((path, key))
            if doc is None:
                raise RuntimeError(f"no old copy of {path} to keep in the layout")
            kept[(path, key)] = doc
    return kept
