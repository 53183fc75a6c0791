"""Which of a plan's anchors one request marks with cache_control. Pure.

A plan may keep more cache entries alive than one request has breakpoints: an entry
written by an earlier request stays readable while something refreshes it, and a
breakpoint finds a live entry up to 20 positions behind it (the API's lookback). So a
plan has up to `MAX_ANCHORS` anchors (block ends whose entries are worth keeping) and
each request marks at most `slots` of them:

- when something changed, the anchors nearest the end among those after the last live
  one, so that the rewrite leaves fresh entries where the next edit is likely; the
  first of them within the lookback of the live anchor it reads through (else that
  anchor itself is marked);
- with slots to spare, the live anchor that ends the stable part (`keep`): when the
  volatile tail is edited, it is what the next request reads through, so it must not
  lapse while the questions read past it; and, first of all, an anchor a marker block
  was just added after (`must`): its 1-hour breakpoint is what the marker is for;
- otherwise, and with slots to spare, live anchors in rotation, so that each is
  refreshed before its TTL runs out;
- always the last anchor, the end of the corpus.

A breakpoint adds no cost of its own: a request pays for what it reads and for what lies
between what it reads and its last breakpoint, however many breakpoints are in between.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

LOOKBACK = 20  # positions a breakpoint searches backwards, itself included
MAX_ANCHORS = 5  # block ends kept alive per shard, the end of the corpus included


def select_breakpoints(
    anchors: Sequence[int],
    alive: Collection[int],
    *,
    slots: int,
    turn: int,
    keep: int | None = None,
    markers: Mapping[int, int] | None = None,
    must: int | None = None,
    lookback: int = LOOKBACK,
) -> list[int]:
    """Anchor positions (ascending) to mark on this request.

    `anchors` are the positions of the plan's block ends, ascending, the last being the end
    of the corpus; `alive` those whose entries are believed live for the current content;
    `turn` counts requests, for the rotation; `markers`: the marker blocks after documents
    (markers.py), which the lookback counts as positions too; `lookback`: the model's
    (its table entry's `cache_lookback`).
    """
    if not anchors or slots <= 0:
        return []
    end = anchors[-1]
    live = [a for a in anchors if a in alive]
    read = live[-1] if live else None
    chosen: set[int] = {end}
    if must is not None and must in anchors and slots > 1:
        chosen.add(must)
    if read != end:
        # The whole range after `read` is rewritten whichever anchors are marked in it, so
        # mark the ones nearest the end: that is where the next edits land.
        dead = [a for a in anchors[:-1] if (read is None or a > read) and a not in chosen]
        room = slots - len(chosen)
        wanted = dead[len(dead) - room :] if room > 0 else []
        first = min(a for a in (*chosen, *wanted) if read is None or a > read)
        if read is not None and _blocks(read, first, markers) >= lookback:
            wanted = wanted[1:]
            if len(chosen) + len(wanted) < slots:
                chosen.add(read)  # out of the lookback's reach: mark the live anchor itself
        chosen.update(wanted)
    if keep is not None and keep in alive and keep in anchors and len(chosen) < slots:
        chosen.add(keep)
    spare = [a for a in live if a not in chosen]
    if spare:
        start = turn % len(spare)
        for a in spare[start:] + spare[:start]:
            if len(chosen) >= slots:
                break
            chosen.add(a)
    return sorted(chosen)


def _blocks(after: int, to: int, markers: Mapping[int, int] | None) -> int:
    """How many positions back from the breakpoint on anchor `to` the lookback must walk to
    reach the entry on anchor `after`: the documents between, and the marker blocks after
    each of them (an anchor's breakpoint sits on its last marker block)."""
    extra = sum(count for p, count in (markers or {}).items() if after < p <= to)
    return to - after + extra
