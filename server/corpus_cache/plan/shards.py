"""Shards: corpora larger than the budget are split into parts that each fit. Pure.

Assignment is stable: a document stays in its shard unless that shard no longer fits,
and then only the documents that must move do (most recently changed first). Newcomers
join the shard that already holds most of their folder, if it has room, else the shard
with the most room, else a new shard. A first assignment fills shards in path order, so
a folder's documents tend to share a shard.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from .stability import DocInfo


def _folder(path: str) -> str:
    return path.rpartition("/")[0]


class Assignment(NamedTuple):
    shards: dict[str, int]  # shard number per path
    oversized: list[str]  # documents too large for any shard on their own
    kept: bool  # every document assigned before is in the shard it was in


def assign_shards(
    docs: Sequence[DocInfo],
    *,
    budget: int,
    overhead: int,
    previous: Mapping[str, int] | None = None,
) -> Assignment:
    """Shard number per path, and the documents too large for any shard on their own."""
    room = budget - overhead
    fitting = [d for d in docs if d.tokens <= room]
    oversized = sorted(d.path for d in docs if d.tokens > room)
    if sum(d.tokens for d in fitting) <= room:
        return Assignment({d.path: 0 for d in fitting}, oversized, False)

    previous = previous or {}
    kept = _kept_assignment(fitting, room, previous)
    if kept is not None:
        return Assignment(kept, oversized, True)
    return Assignment(_assign(fitting, room, previous), oversized, False)


def _assign(fitting: Sequence[DocInfo], room: int, previous: Mapping[str, int]) -> dict[str, int]:
    by_path = {d.path: d for d in fitting}
    shards: dict[int, list[DocInfo]] = {}
    pending: list[DocInfo] = []
    for doc in sorted(fitting, key=lambda d: d.path):
        number = previous.get(doc.path)
        if number is None:
            pending.append(doc)
        else:
            shards.setdefault(number, []).append(doc)
    for members in shards.values():
        load = sum(d.tokens for d in members)
        # Over budget: the most recently changed documents leave first.
        for doc in sorted(members, key=lambda d: (-d.last_change, d.path)):
            if load <= room:
                break
            members.remove(doc)
            pending.append(doc)
            load -= doc.tokens

    loads = {n: sum(d.tokens for d in m) for n, m in shards.items()}
    folders = {n: Counter(_folder(d.path) for d in m) for n, m in shards.items()}
    for doc in sorted(pending, key=lambda d: d.path):
        folder = _folder(doc.path)
        same_folder = sorted(
            (n for n in shards if folders[n][folder]), key=lambda n: (-folders[n][folder], n)
        )
        target = next((n for n in same_folder if loads[n] + doc.tokens <= room), None)
        if target is None:
            roomiest = min(loads, key=lambda n: (loads[n], n), default=None)
            if roomiest is not None and loads[roomiest] + doc.tokens <= room:
                target = roomiest
        if target is None:
            target = max(loads, default=-1) + 1
            shards[target], loads[target], folders[target] = [], 0, Counter()
        shards[target].append(doc)
        loads[target] += doc.tokens
        folders[target][folder] += 1
    assignment = {d.path: n for n, members in shards.items() for d in members}
    assert set(assignment) == set(by_path)
    return _renumbered(assignment, previous)


def _kept_assignment(
    fitting: Sequence[DocInfo], room: int, previous: Mapping[str, int]
) -> dict[str, int] | None:
    """The previous assignment, when every document has a shard there and none is over
    budget (what the whole assignment gives then, without sorting a large corpus after
    each save); None otherwise."""
    if not previous:
        return None
    loads: dict[int, int] = {}
    assignment: dict[str, int] = {}
    for doc in fitting:
        number = previous.get(doc.path)
        if number is None:
            return None
        assignment[doc.path] = number
        loads[number] = loads.get(number, 0) + doc.tokens
    if any(load > room for load in loads.values()):
        return None
    return assignment


def _renumbered(assignment: dict[str, int], previous: Mapping[str, int]) -> dict[str, int]:
    """Drop empty shard numbers, keeping numbers that existed before where possible."""
    used = sorted(set(assignment.values()))
    if used == list(range(len(used))) or previous:
        return assignment
    mapping = {old: new for new, old in enumerate(used)}
    return {path: mapping[n] for path, n in assignment.items()}
