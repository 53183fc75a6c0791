"""How likely each document is to change, and the order that keeps stable text first.

Each document carries what scans and the watcher observed: when it last changed and how
often. A document is *hot* when it changed within `HOT_WINDOW` seconds; hot documents form
the volatile tail. An edit moves just that document to the tail's end, and everything
after its old place is written again anyway: that part is ordered by how likely each
document is to be edited next, per token, the likeliest last, where its next edit rewrites
the least. Cold documents keep the order they had in the previous plan (hysteresis):
nothing stable is reshuffled because one file changed. Without a previous plan, cold
documents are ordered by how long ago they were modified, oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HOT_WINDOW = 24 * 3600.0
_PRIOR_EDITS = 0.5
_PRIOR_SPAN = 7 * 24 * 3600.0
_RECENCY = 3600.0


@dataclass(frozen=True)
class DocInfo:
    """A document as the planner sees it."""

    path: str
    tokens: int
    key: str  # changes whenever the content (or title) changes
    last_change: float  # epoch seconds: last observed edit, or the mtime when first seen
    edits: int = 0  # edits observed while the server ran
    first_seen: float = 0.0
    superseded: bool = False  # an edited document's old copy, kept for its cached prefix
    edit_weight: float = 0.0  # how likely the next edit is to be this document's (EditPattern)


@dataclass(frozen=True)
class EditPattern:
    """What the edits so far say about the next one, as a mix of two habits: saving the
    file just saved again, and editing each file about as often as it has been. How much
    each habit counts is learnt from how often an edit went to the file edited just before
    (starting from even odds): a writer revising one document repeats, a maintainer going
    through several files does not."""

    last: str | None = None  # the document edited last
    repeats: int = 0  # edits that went to the document edited just before
    edits: int = 0

    def after(self, path: str) -> EditPattern:
        return EditPattern(path, self.repeats + (path == self.last), self.edits + 1)

    @property
    def repeat_chance(self) -> float:
        return (self.repeats + 1) / (max(self.edits - 1, 0) + 2)

    def next_edit_weight(self, path: str, edits: int) -> float:
        """The chance that the next edit is to `path`, edited `edits` times so far."""
        if not self.edits or (not edits and path != self.last):
            return 0.0
        again = self.repeat_chance
        return again * (path == self.last) + (1.0 - again) * edits / self.edits


def is_hot(doc: DocInfo, now: float) -> bool:
    return now - doc.last_change < HOT_WINDOW


def edit_rate(doc: DocInfo, now: float) -> float:
    """Expected edits per second.

    The observed rate (edits over the time watched, at least an hour) or, while the
    document is hot, the recency rate (a file just edited is likely to be edited again),
    whichever is higher; plus a small prior that shrinks with the time since the last
    change, so an untouched file is unlikely but never impossible to change.
    """
    observed = doc.edits / max(now - doc.first_seen, _RECENCY) if doc.edits else 0.0
    recency = 1.0 / (max(0.0, now - doc.last_change) + _RECENCY) if is_hot(doc, now) else 0.0
    prior = _PRIOR_EDITS / (max(0.0, now - doc.last_change) + _PRIOR_SPAN)
    return max(observed, recency) + prior


def rates(docs: Sequence[DocInfo], now: float) -> list[float]:
    """Each document's edit rate, with the observed arrival of *new* edits spread over the
    cold documents: when files start changing one after another, whichever cold file is
    next is unknown, but that one will be is a fact worth planning for."""
    if not docs:
        return []
    start = min(d.first_seen for d in docs)
    started = sum(1 for d in docs if d.edits > 0)
    cold = [d for d in docs if not is_hot(d, now)]
    arrival = started / (max(0.0, now - start) + _RECENCY) / len(cold) if cold else 0.0
    return [edit_rate(d, now) + (0.0 if is_hot(d, now) else arrival) for d in docs]


def stability_order(
    docs: Sequence[DocInfo],
    now: float,
    previous: Sequence[tuple[str, str]] = (),
    previous_tail: int = 0,
) -> list[DocInfo]:
    """Cold documents first (previous order kept, newcomers oldest-first), then hot ones.

    `previous` is the previous plan's (path, key) order and `previous_tail` where its hot
    tail began. Hot documents already in that tail and unchanged keep their place; a
    document edited since joins the end, most recent last. Moving the edited document
    costs nothing extra (its edit invalidates from its old place anyway) and puts the
    file being worked on where its next edit rewrites the least.
    """
    rank = {path: i for i, (path, _) in enumerate(previous)}
    key_before = dict(previous)
    cold = [d for d in docs if not is_hot(d, now)]
    hot = [d for d in docs if is_hot(d, now)]
    known = sorted((d for d in cold if d.path in rank), key=lambda d: rank[d.path])
    newcomers = sorted(
        (d for d in cold if d.path not in rank), key=lambda d: (d.last_change, d.path)
    )

    def settled(d: DocInfo) -> bool:
        return rank.get(d.path, -1) >= previous_tail and key_before.get(d.path) == d.key

    # The previous tail holds its place up to its first entry no hot document still is.
    present = {(d.path, d.key) for d in hot if settled(d)}
    tail = list(previous[previous_tail:])
    holds = next((i for i, entry in enumerate(tail) if entry not in present), len(tail))

    def holding(d: DocInfo) -> bool:
        return settled(d) and rank[d.path] < previous_tail + holds

    staying = sorted((d for d in hot if holding(d)), key=lambda d: rank[d.path])
    rewritten = sorted(
        (d for d in hot if not holding(d)),
        key=lambda d: (d.edit_weight / max(d.tokens, 1), d.last_change, d.path),
    )
    return known + newcomers + staying + rewritten
