"""Marker blocks: how a live 5-minute cache entry becomes a 1-hour one. Pure.

A hit never changes an entry's TTL. But a request that reads a live entry and puts a
1-hour breakpoint one small block later writes a new entry holding the whole prefix, and
pays the 1-hour price for that block only. The block is a marker (a text block the
instructions tell Claude to ignore) right after a document that ends an anchor. Markers
stay in every request after, so the prefix stays the one the 1-hour entry holds.

Per shard, markers are a mapping from a document position (an anchor) to how many marker
blocks follow it: a second upgrade of the same prefix, after its 1-hour entry lapsed and a
5-minute one was written again, needs a prefix no entry has, so it adds one more.

Two places get markers:
- the end of the stable part, by the second question within 5 minutes, when the policy
  upgrades (`for_question`), or else by a keep-warm request 4.5 minutes after the last
  question (`Engine.upgraded`);
- the end of the volatile tail, by the second question that reads an edited tail while
  the stable part is a 1-hour entry (`for_question`), or by a keep-warm request when
  the last question before a silence wrote it and holding it is worth a read of the
  prefix (`Engine.tail_held`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from corpus_cache.api.request import INSTRUCTIONS
from corpus_cache.models.pricing import Ttl
from corpus_cache.plan.layout import Layout, Plan, shared_prefix

MAX_MARKERS = 4  # marker blocks after one document before an upgrade waits for a full write

Markers = Mapping[int, int]  # document position -> marker blocks after it


def with_one_more(markers: Markers, position: int) -> dict[int, int]:
    """`markers` with one more marker block after `position`."""
    return {**markers, position: markers.get(position, 0) + 1}


def without(markers: Markers, position: int) -> dict[int, int]:
    return {p: count for p, count in markers.items() if p != position}


def can_add(markers: Markers, position: int) -> bool:
    return markers.get(position, 0) < MAX_MARKERS


def carried(old: Plan, new: Plan, markers: Markers) -> dict[int, int]:
    """The markers of `old` that still mean something in `new`: those after a document
    that still ends an anchor, with every document up to it unchanged (so the cached
    prefix through them is still the one the request would send)."""
    same = shared_prefix(
        list(zip(old.order, old.keys, strict=True)), list(zip(new.order, new.keys, strict=True))
    )
    anchors = set(new.anchors)
    return {p: count for p, count in markers.items() if p < same and p in anchors}


def carried_in_layout(
    old: Layout | None, new: Layout, markers: Mapping[int, Markers]
) -> dict[int, dict[int, int]]:
    """`carried` for every shard of `new` that `old` had."""
    if old is None:
        return {}
    before = {s.number: s.plan for s in old.shards}
    kept: dict[int, dict[int, int]] = {}
    for shard in new.shards:
        if shard.number in before and markers.get(shard.number):
            found = carried(before[shard.number], shard.plan, markers[shard.number])
            if found:
                kept[shard.number] = found
    return kept


def plan_identity(plan: Plan) -> str:
    """An identity of `plan`'s documents in their order: markers are placed by position, and
    mean the same in another instance only on the same documents in the same order."""
    digest = hashlib.sha256()
    for path, key in zip(plan.order, plan.keys, strict=True):
        digest.update(f"{path}\0{key}\0".encode())
    return digest.hexdigest()


def anchor_ids(
    layout: Layout,
    model: str,
    markers: Mapping[int, Markers] | None = None,
    known: Mapping[int, dict[int, str]] | None = None,
) -> dict[int, dict[int, str]]:
    """For each shard, each anchor's entry identity: the model and every (path, content)
    before it, in order, with any marker blocks, as the API's prefix hash would see them.
    `known`: the identities of shards whose plan and markers are those they were computed
    for (taken as they are)."""
    ids: dict[int, dict[int, str]] = {}
    for shard in layout.shards:
        if known is not None and shard.number in known:
            ids[shard.number] = known[shard.number]
            continue
        plan = shard.plan
        anchors = set(plan.anchors)
        after = (markers or {}).get(shard.number, {})
        running = hashlib.sha256(f"{model}\0{INSTRUCTIONS}".encode())
        ids[shard.number] = {}
        for position, (path, key) in enumerate(zip(plan.order, plan.keys, strict=True)):
            running.update(f"\0{path}\0{key}".encode())
            running.update(b"\0marker" * after.get(position, 0))
            if position in anchors:
                ids[shard.number][position] = running.copy().hexdigest()
    return ids


def for_question(
    plan: Plan,
    markers: Markers,
    live: Mapping[int, Ttl],
    *,
    upgrade_stable: bool,
    hold_tail: bool,
) -> dict[int, int]:
    """The markers a question on `plan` sends, given `live`: the anchors whose cache
    entries are alive, with their TTLs.

    - None past the furthest live anchor: what follows it is written again anyway, and
      then at the policy's TTL, not at the 1-hour price a marker's breakpoint asks.
    - One more after the stable part when `upgrade_stable` (the policy wants it held for
      the hour, and rewriting the tail after the marker costs less than the keep-warm
      upgrade's read) and the question reads it as a 5-minute entry.
    - One after the tail when `hold_tail` and the question reads it as a 5-minute entry
      while the stable part is a 1-hour one: a tail read twice is worth holding as long
      as the stable part, and only a tail the last question before a break wrote lapses.
    """
    if not plan.cached or not plan.anchors:
        return dict(markers)
    furthest = max(live, default=-1)
    kept = {p: count for p, count in markers.items() if p <= furthest}
    stable, end = plan.stable_anchor, plan.anchors[-1]
    if stable is None:
        return kept
    if upgrade_stable and live.get(stable) == "5m" and can_add(kept, stable):
        return with_one_more(kept, stable)
    if (
        hold_tail
        and end != stable
        and end not in kept
        and live.get(end) == "5m"
        and live.get(stable) == "1h"
    ):
        return with_one_more(kept, end)
    return kept


def held_through(markers: Markers) -> int | None:
    """The last anchor followed by markers: its entry and every one before it are 1-hour."""
    return max(markers, default=None)
