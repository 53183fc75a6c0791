"""Exact token figures learned from the usage the API reports for our own requests. Pure.

A response's `cache_read_input_tokens + cache_creation_input_tokens` is the prompt through
the request's last breakpoint, whatever was read and whatever written: the API reads the
longest cached prefix and writes from there to the last breakpoint (0 when that prefix is
under the minimum cacheable length: nothing is learned then). When the prompt through that
breakpoint holds only the head (request and message framing, the system prompt) and
document blocks as they are counted (no marker block, no outdated copy's note, no
conversation), it is the head plus those blocks' counts, exactly.

Two such prefixes of one order (a staged build's slices, a warming and a question marking
different anchors) differ by the exact sum of the documents between them; with the head
known (`head_from`: a prefix whose documents are all counted), one prefix gives the sum of
all its documents. A run of one document gives its count; a run whose other documents are
known gives the last one's; any other run gives a sum, which calibrates the estimate
(api/estimate.py) and tightens its members' figures.
Nothing else is assumed: a figure that contradicts what is known (the real API's counts
may differ slightly from its usage) teaches nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Observed:
    """The prompt through a request's last breakpoint: the head and the document blocks
    of `keys` (content keys, in prompt order), `tokens` in all."""

    keys: tuple[str, ...]
    tokens: int


@dataclass(frozen=True)
class Learned:
    exact: dict[str, int] = field(default_factory=dict)  # content key -> its count
    # Several documents' exact sum, by their keys (sorted); none of them known alone.
    sums: dict[tuple[str, ...], int] = field(default_factory=dict)
    conflicts: int = 0  # runs whose figures contradict what was known: nothing taken


def runs(observed: Iterable[Observed], head: int | None) -> list[tuple[tuple[str, ...], int]]:
    """The runs of documents whose sum `observed` makes exact, with that sum: from each
    prefix to the next longer one of the same order, and from the start of the first when
    the `head` is known (it cancels out of a difference, not out of a first prefix)."""
    ordered = sorted({o for o in observed if o.tokens > 0}, key=lambda o: (len(o.keys), o.tokens))
    out: list[tuple[tuple[str, ...], int]] = []
    for i, longer in enumerate(ordered):
        shorter = next(
            (
                o
                for o in reversed(ordered[:i])
                if len(o.keys) < len(longer.keys) and longer.keys[: len(o.keys)] == o.keys
            ),
            None,
        )
        if shorter is not None:
            out.append((longer.keys[len(shorter.keys) :], longer.tokens - shorter.tokens))
        elif head is not None and longer.keys:
            out.append((longer.keys, longer.tokens - head))
    return out


def head_from(observed: Iterable[Observed], known: Mapping[str, int]) -> int | None:
    """What every prompt holds before its first document (framing, the system prompt), from
    the prefixes whose documents are all known: their tokens less the documents'. None if no
    prefix shows it, or two disagree. Not from count_tokens: a count may include a few
    tokens of its own, which cancel out of a document's count (a difference of two counts)
    but not out of the head."""
    heads = {
        o.tokens - sum(known[k] for k in o.keys)
        for o in observed
        if o.tokens > 0 and all(k in known for k in o.keys)
    }
    return heads.pop() if len(heads) == 1 else None


def resolve(found: Iterable[tuple[tuple[str, ...], int]], known: Mapping[str, int]) -> Learned:
    """What `found` runs say, given the exact counts `known` (by content key): each run
    with one document not known gives that document's count, repeatedly (one learned may
    resolve another run); a run with more gives their sum. Every block counts at least 1,
    so a run whose rest is less than its unknown documents contradicts what is known."""
    figure = dict(known)
    exact: dict[str, int] = {}
    pending: list[tuple[tuple[str, ...], int]] = []
    conflicts = 0
    for keys, total in found:
        if keys and len(set(keys)) == len(keys):  # a document twice is no order we send
            pending.append((keys, total))
        elif keys:
            conflicts += 1
    progress = True
    while progress:
        progress = False
        left: list[tuple[tuple[str, ...], int]] = []
        for keys, total in pending:
            unknown = [k for k in keys if k not in figure]
            rest = total - sum(figure[k] for k in keys if k in figure)
            if rest < len(unknown) or (not unknown and rest != 0):
                conflicts += 1
            elif len(unknown) == 1:
                exact[unknown[0]] = figure[unknown[0]] = rest
                progress = True
            elif unknown:
                left.append((keys, total))
        pending = left
    sums = {
        tuple(sorted(k for k in keys if k not in figure)): total
        - sum(figure[k] for k in keys if k in figure)
        for keys, total in pending
    }
    return Learned(exact, sums, conflicts)


def shares(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """`total` split among `weights`' keys in proportion, whole numbers summing to it
    exactly, each at least 1 (a block counts at least one token; `total` >= their number):
    the figures of documents whose sum is known and whose counts are not."""
    keys = sorted(weights)
    if not keys:
        return {}
    spare = total - len(keys)
    given = {k: max(weights[k], 0.0) for k in keys}
    if not sum(given.values()):
        given = dict.fromkeys(keys, 1.0)
    weight = sum(given.values())
    raw = {k: spare * given[k] / weight for k in keys}
    out = {k: 1 + int(raw[k]) for k in keys}
    # The remainder to the largest fractional parts, so that the sum is exact.
    for k in sorted(keys, key=lambda k: (int(raw[k]) - raw[k], k))[: total - sum(out.values())]:
        out[k] += 1
    return out
