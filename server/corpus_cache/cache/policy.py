"""When to pay for a longer TTL, when to keep the cache warm, when to let it lapse. Pure.

The choice is made per shard from the gaps observed between its questions, and the prices
in the model table. For a prefix of P tokens at the input price, with r the read multiplier:

- a question that finds the entry alive pays a read, r·P;
- one that finds it expired pays a write: 1.25·P at the 5-minute TTL, 2·P at 1 hour;
- a keep-warm ping (a `max_tokens: 0` request) pays a read and keeps the entry alive for
  another TTL.

This is the ski-rental problem: keep paying rent (pings) or buy (rewrite). Each option's
expected cost per question is computed over the recent gaps, exactly for each gap rather
than from an average, and the cheapest option wins:

- `5m`: let the entry lapse between questions more than 5 minutes apart;
- `5m+warm(k)`: after each question, up to k pings 4.5 minutes apart, then let it lapse.
  The best k is searched, so a gap longer than the pings' reach still costs the rewrite;
- `1h/5m`: write the stable part of the prefix (before the volatile tail) with the 1-hour
  TTL, the tail with 5 minutes (1h breakpoints must come before 5m ones); `1h`: both for
  an hour. The extra cost of the 1-hour write is spread over as many questions as the
  history holds; each edit rewrites the tail at the tail's write price;
- `1h+warm(k)`: the same, with up to k pings an hour apart;
- `5m>1h+warm(k)`: 5-minute entries, upgraded to 1 hour, then up to k pings an hour
  apart. A hit does not change an entry's TTL, but a request that reads a live entry and
  writes a 1-hour breakpoint a block later pays the 1-hour price for that block only, and
  its new entry holds the whole prefix (markers.py). The second question within 5 minutes
  makes the upgrade for the price of the block (and of the tail after it, written again,
  when that costs less than a read of the prefix); failing that, a keep-warm request 4.5
  minutes after the last question, for a read of the prefix and the tail at 2x. Writing
  1-hour entries from the start costs 2x the prefix.

A 5-minute tail behind a 1-hour stable part is held for the hour the same way, by the
second question that reads it; so only a tail written by the last question before a
break (just after an edit) lapses in it.

Until gaps are seen, a prior stands in: a few gaps of a minute, a typical working
session. Two breaks (40 and 100 minutes) are always counted with the gaps, their weight
fading as gaps are seen: people come back after a break, and before the first break is
seen they make the cheap upgrade, and an hourly ping, worth buying. The decision carries a
sentence explaining it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from corpus_cache.wording import plural

Ttl = Literal["5m", "1h"]

FIVE_MINUTES = 300.0
ONE_HOUR = 3600.0
PING_MARGIN = 30.0  # ping this long before the entry would expire
MAX_PINGS = 24
RECENT_GAPS = 50
PRIOR_GAPS = (60.0, 60.0, 90.0)
# Counted with the observed gaps, always: people come back after a break, sometimes after
# more than an hour. Their weight fades as gaps are seen; they make a cheap upgrade (and an
# hourly ping) worth buying before the first break has been seen.
PRIOR_BREAKS = (40 * 60.0, 100 * 60.0)


@dataclass(frozen=True)
class Prices:
    """Per token of prefix, in units of the base input price."""

    read: float
    write_5m: float
    write_1h: float


@dataclass(frozen=True)
class Decision:
    stable_ttl: Ttl  # TTL of the anchors before the volatile tail
    tail_ttl: Ttl  # TTL of the tail's anchors
    ping_every: float | None  # seconds between keep-warm pings, None for none
    max_pings: int  # pings after a question before letting the entry lapse
    expected_cost: float  # per question, in prefix-token units
    name: str
    reason: str
    upgrade: bool = False  # upgrade 5-minute entries to 1 hour when a gap outlasts them


def expected_cost(
    gaps: Sequence[float],
    *,
    stable: float,
    tail: float,
    prices: Prices,
    stable_ttl: Ttl,
    pings: int,
    tail_ttl: Ttl = "5m",
    edits_per_question: float = 0.0,
    edit_tokens: float | None = None,
) -> float:
    """Expected cost per question, in prefix tokens at the input price: what happens in
    each gap (pings, then a read or a rewrite of each part), edits, and the one-off extra
    of 1-hour writes spread over the questions seen."""
    write = {"5m": prices.write_5m, "1h": prices.write_1h}
    life = {"5m": FIVE_MINUTES, "1h": ONE_HOUR}
    interval = life[stable_ttl] - PING_MARGIN
    stale = _stale_tail(edits_per_question)
    cost = 0.0
    for gap in gaps:
        sent = min(pings, int(gap // interval))
        stable_alive = gap <= life[stable_ttl] + pings * interval
        cost += sent * prices.read * (stable + tail)
        cost += stable * (prices.read if stable_alive else write[stable_ttl])
        if tail_ttl == stable_ttl or gap <= life[tail_ttl]:
            # Pings keep the tail alive with the stable part when they share their TTL.
            cost += tail * (prices.read if stable_alive else write[tail_ttl])
        elif stable_alive:
            # A 5-minute tail behind a 1-hour stable part: held for the hour by a marker
            # once a second question reads it; lapsed if the last question wrote it.
            cost += tail * (stale * write[tail_ttl] + (1.0 - stale) * prices.read)
        else:
            cost += tail * write[tail_ttl]
    cost /= len(gaps)
    # Each edit rewrites (about) the tail, at the tail's write price.
    cost += edits_per_question * (tail if edit_tokens is None else edit_tokens) * write[tail_ttl]
    if stable_ttl == "1h":
        cost += (prices.write_1h - prices.write_5m) * stable / len(gaps)
    return cost


def expected_cost_with_upgrade(
    gaps: Sequence[float],
    *,
    stable: float,
    tail: float,
    prices: Prices,
    pings: int,
    tail_ttl: Ttl = "5m",
    edits_per_question: float = 0.0,
    edit_tokens: float | None = None,
) -> float:
    """Expected cost per question of `5m>1h+warm(k)`, gap by gap in order: a question
    refreshes an upgraded entry for another hour, so it is upgraded once per lapse. Once
    upgraded, the tail is written with `tail_ttl`: with 5 minutes, an edited tail is
    written again after each gap longer than that."""
    prefix = stable + tail
    interval = ONE_HOUR - PING_MARGIN
    upgraded = False
    cost = 0.0
    stale_tail = _stale_tail(edits_per_question)
    by_question = upgrades_at_question(stable, tail, prices)
    for gap in gaps:
        left = gap
        if not upgraded:
            if gap <= FIVE_MINUTES:
                cost += prices.read * prefix
                if by_question:  # this question reads the entry and makes the upgrade
                    cost += prices.write_5m * tail
                    upgraded = True
                continue
            cost += prices.read * prefix + prices.write_1h * tail  # the upgrade by a ping
            upgraded = True
            left = gap - (FIVE_MINUTES - PING_MARGIN)
        elif tail_ttl == "5m" and gap > FIVE_MINUTES:
            cost += stale_tail * prices.write_5m * tail
        sent = min(pings, int(left // interval))
        cost += sent * prices.read * prefix
        if left <= ONE_HOUR + pings * interval:
            cost += prices.read * prefix
        else:
            cost += prices.write_5m * prefix
            upgraded = False
    cost /= len(gaps)
    write = prices.write_1h if tail_ttl == "1h" else prices.write_5m
    return cost + edits_per_question * (tail if edit_tokens is None else edit_tokens) * write


def upgrades_at_question(stable: float, tail: float, prices: Prices) -> bool:
    """Whether a question that reads a live 5-minute stable part upgrades it: it writes the
    tail after the new marker again, which must cost less than the read of the prefix a
    keep-warm upgrade would pay (and that upgrade writes the tail again too, at 2x)."""
    return prices.write_5m * tail <= prices.read * (stable + tail)


def anchor_ttls(
    anchors: Sequence[int],
    *,
    tail_start: int,
    decision: Decision,
    stable_held: bool,
    held_through: int | None,
) -> dict[int, Ttl]:
    """The TTL each anchor's breakpoint asks for on a request.

    By the decision: the stable part's TTL before the tail, the tail's after; when it
    upgrades, 5 minutes for all until the stable part is held as a 1-hour entry, then the
    tail's TTL (a hit keeps an entry's own TTL, so a 5-minute mark on a 1-hour entry only
    reads it). `held_through`: the last anchor followed by a marker (markers.py), whose
    entry is (or is now written as) a 1-hour one: it and every anchor before it ask for 1
    hour, since 1-hour breakpoints must come before 5-minute ones."""
    ttls: dict[int, Ttl] = {}
    for anchor in anchors:
        if held_through is not None and anchor <= held_through:
            ttls[anchor] = "1h"
        elif decision.upgrade:
            ttls[anchor] = decision.tail_ttl if stable_held else "5m"
        else:
            ttls[anchor] = decision.stable_ttl if anchor < tail_start else decision.tail_ttl
    return ttls


def holding_tail_pays(
    gaps: Sequence[float],
    *,
    stable: float,
    tail: float,
    prices: Prices,
    edits_per_question: float,
    pings: int,
) -> bool:
    """Whether, 4.5 minutes into a silence, a keep-warm request should hold for the hour a
    5-minute tail behind a 1-hour stable part (it costs a read of the whole prefix): when
    that costs less than writing the tail again, which the next question does if it comes
    while the stable part is held and the tail was not edited meanwhile."""
    silences = [gap for gap in considered_gaps(gaps) if gap > FIVE_MINUTES - PING_MARGIN]
    if not silences:
        return False
    reach = ONE_HOUR + pings * (ONE_HOUR - PING_MARGIN)
    back = sum(1 for gap in silences if gap <= reach) / len(silences)
    saved = back * (1.0 - _stale_tail(edits_per_question)) * prices.write_5m * tail
    return saved > prices.read * (stable + tail)


def _stale_tail(edits_per_question: float) -> float:
    """The chance that the tail lapses in a break though the stable part is held: a 5-minute
    tail is held for the hour by the second question that reads it (markers.py), so only
    one the last question before the break wrote (after an edit) is lost."""
    return min(1.0, edits_per_question)


def considered_gaps(gaps: Sequence[float]) -> list[float]:
    """The gaps a decision weighs: the recent ones (or a working session's, before any),
    and the prior breaks."""
    return [*(list(gaps[-RECENT_GAPS:]) or list(PRIOR_GAPS)), *PRIOR_BREAKS]


def decide(
    gaps: Sequence[float],
    *,
    stable_tokens: int,
    tail_tokens: int,
    prices: Prices,
    forced: Ttl | None = None,
    edits_per_question: float = 0.0,
    edit_tokens: float | None = None,
) -> Decision:
    """The cheapest option for the recent gaps (seconds between a shard's questions).
    `edit_tokens`: what an edit rewrites, on average (by default the whole tail)."""
    seen = list(gaps[-RECENT_GAPS:]) or list(PRIOR_GAPS)
    recent = considered_gaps(gaps)
    stable, tail = float(stable_tokens), float(tail_tokens)
    combos: list[tuple[Ttl, Ttl]] = [("5m", "5m"), ("1h", "5m"), ("1h", "1h")]
    if forced is not None:
        combos = [(forced, forced)]
    options: list[tuple[float, bool, Ttl, Ttl, int]] = []
    for stable_ttl, tail_ttl in combos:
        for pings in range(MAX_PINGS + 1):
            cost = expected_cost(
                recent, stable=stable, tail=tail, prices=prices, stable_ttl=stable_ttl,
                pings=pings, tail_ttl=tail_ttl, edits_per_question=edits_per_question,
                edit_tokens=edit_tokens,
            )  # fmt: skip
            options.append((cost, False, stable_ttl, tail_ttl, pings))
    if forced is None:
        for upgraded_tail in ("5m", "1h"):
            for pings in range(MAX_PINGS + 1):
                cost = expected_cost_with_upgrade(
                    recent, stable=stable, tail=tail, prices=prices, pings=pings,
                    tail_ttl=upgraded_tail, edits_per_question=edits_per_question,
                    edit_tokens=edit_tokens,
                )  # fmt: skip
                options.append((cost, True, "5m", upgraded_tail, pings))
    # Ties go to no upgrade, shorter TTLs and fewer pings: the simpler choice.
    cost, upgrade, stable_ttl, tail_ttl, pings = min(
        options, key=lambda o: (round(o[0], 6), o[1], o[2] == "1h", o[3] == "1h", o[4])
    )
    ping_every = (FIVE_MINUTES if stable_ttl == "5m" and not upgrade else ONE_HOUR) - PING_MARGIN
    name = stable_ttl + ("" if tail_ttl == stable_ttl else f"/{tail_ttl}")
    name = ("5m>1h" + ("" if tail_ttl == "1h" else "/5m")) if upgrade else name
    name += f"+warm({pings})" if pings else ""
    reason = _explain(seen, stable_ttl, tail_ttl, pings, ping_every, gaps_seen=len(gaps))
    if upgrade:
        by_question = upgrades_at_question(stable, tail, prices)
        reason = _explain_upgrade(seen, pings, tail_ttl, by_question, gaps_seen=len(gaps))
    return Decision(
        stable_ttl=stable_ttl,
        tail_ttl=tail_ttl,
        ping_every=ping_every if pings or upgrade else None,
        max_pings=pings,
        expected_cost=cost,
        name=name,
        reason=reason,
        upgrade=upgrade,
    )


def _explain_upgrade(
    gaps: Sequence[float], pings: int, tail_ttl: Ttl, by_question: bool, gaps_seen: int
) -> str:
    how = "one keep-warm request when no question comes within 4.5 minutes"
    if by_question:
        how = f"the next question within 5 minutes, or else by {how}"
    what = (
        f"5-minute cache entries, turned into 1-hour ones for the price of a marker by {how} "
        "(cheaper than writing 1-hour entries, which costs 2x the input price)"
    )
    if tail_ttl == "1h":
        what += "; recently edited files are then written with 1 hour too"
    if pings:
        what += f", then kept warm by up to {plural(pings, 'hourly keep-warm request')}"
    return f"{what}: {_basis(gaps, gaps_seen)}."


def _basis(gaps: Sequence[float], gaps_seen: int) -> str:
    ordered = sorted(gaps)
    median = ordered[len(ordered) // 2]
    if not gaps_seen:
        return "no gaps observed yet, so a working session is assumed"
    return f"questions have come a median {median / 60:.1f} minutes apart (last {len(gaps)} gaps)"


def _explain(
    gaps: Sequence[float], ttl: Ttl, tail_ttl: Ttl, pings: int, every: float, gaps_seen: int
) -> str:
    basis = _basis(gaps, gaps_seen)
    if ttl == "5m" and not pings:
        what = "5-minute cache entries, let lapse between distant questions: cheaper than "
        what += "keeping them warm or paying twice the input price for 1-hour entries"
    elif ttl == "5m":
        what = (
            f"5-minute cache entries kept warm by up to {plural(pings, 'keep-warm request')} "
            f"{every / 60:.1f} minutes apart after each question, then let lapse"
        )
    elif tail_ttl == "1h":
        what = "1-hour cache entries for every document (writing them costs 2x the input "
        what += "price, but they outlive the gaps, and edits are rare enough)"
    else:
        what = "1-hour cache entries for the stable documents (writing them costs 2x the input "
        what += "price, but they outlive the gaps), 5-minute ones for recently edited files"
    if ttl == "1h" and pings:
        what += f", kept warm by up to {plural(pings, 'hourly keep-warm request')}"
    return f"{what}: {basis}."
