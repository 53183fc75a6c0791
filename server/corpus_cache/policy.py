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
- `1h+warm(k)`: the same, with up to k pings an hour apart.

Until enough gaps are seen, a prior stands in: a few gaps of a minute, a typical working
session. The decision carries a sentence explaining it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Ttl = Literal["5m", "1h"]

FIVE_MINUTES = 300.0
ONE_HOUR = 3600.0
PING_MARGIN = 30.0  # ping this long before the entry would expire
MAX_PINGS = 24
RECENT_GAPS = 50
PRIOR_GAPS = (60.0, 60.0, 90.0)


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


def _expected(
    gaps: Sequence[float],
    *,
    stable: float,
    tail: float,
    prices: Prices,
    stable_ttl: Ttl,
    pings: int,
    tail_ttl: Ttl = "5m",
    edits_per_question: float = 0.0,
) -> float:
    """Expected cost per question, in prefix tokens at the input price: what happens in
    each gap (pings, then a read or a rewrite of each part), edits, and the one-off extra
    of 1-hour writes spread over the questions seen."""
    write = {"5m": prices.write_5m, "1h": prices.write_1h}
    life = {"5m": FIVE_MINUTES, "1h": ONE_HOUR}
    interval = life[stable_ttl] - PING_MARGIN
    cost = 0.0
    for gap in gaps:
        sent = min(pings, int(gap // interval))
        stable_alive = gap <= life[stable_ttl] + pings * interval
        # Pings keep the tail alive only when it has the same TTL as the stable part.
        tail_alive = stable_alive if tail_ttl == stable_ttl else gap <= life[tail_ttl]
        cost += sent * prices.read * (stable + tail)
        cost += stable * (prices.read if stable_alive else write[stable_ttl])
        cost += tail * (prices.read if tail_alive else write[tail_ttl])
    cost /= len(gaps)
    # Each edit rewrites (about) the tail, at the tail's write price.
    cost += edits_per_question * tail * write[tail_ttl]
    if stable_ttl == "1h":
        cost += (prices.write_1h - prices.write_5m) * stable / len(gaps)
    return cost


def decide(
    gaps: Sequence[float],
    *,
    stable_tokens: int,
    tail_tokens: int,
    prices: Prices,
    forced: Ttl | None = None,
    edits_per_question: float = 0.0,
) -> Decision:
    """The cheapest option for the recent gaps (seconds between a shard's questions)."""
    recent = list(gaps[-RECENT_GAPS:]) or list(PRIOR_GAPS)
    stable, tail = float(stable_tokens), float(tail_tokens)
    combos: list[tuple[Ttl, Ttl]] = [("5m", "5m"), ("1h", "5m"), ("1h", "1h")]
    if forced is not None:
        combos = [(forced, forced)]
    options: list[tuple[float, Ttl, Ttl, int]] = []
    for stable_ttl, tail_ttl in combos:
        for pings in range(MAX_PINGS + 1):
            cost = _expected(
                recent, stable=stable, tail=tail, prices=prices, stable_ttl=stable_ttl,
                pings=pings, tail_ttl=tail_ttl, edits_per_question=edits_per_question,
            )  # fmt: skip
            options.append((cost, stable_ttl, tail_ttl, pings))
    # Ties go to shorter TTLs and fewer pings: the simpler, cheaper-to-start choice.
    cost, stable_ttl, tail_ttl, pings = min(
        options, key=lambda o: (round(o[0], 6), o[1] == "1h", o[2] == "1h", o[3])
    )
    ping_every = (FIVE_MINUTES if stable_ttl == "5m" else ONE_HOUR) - PING_MARGIN
    name = stable_ttl + ("" if tail_ttl == stable_ttl else f"/{tail_ttl}")
    name += f"+warm({pings})" if pings else ""
    return Decision(
        stable_ttl=stable_ttl,
        tail_ttl=tail_ttl,
        ping_every=ping_every if pings else None,
        max_pings=pings,
        expected_cost=cost,
        name=name,
        reason=_explain(recent, stable_ttl, tail_ttl, pings, ping_every, gaps_seen=len(gaps)),
    )


def _explain(
    gaps: Sequence[float], ttl: Ttl, tail_ttl: Ttl, pings: int, every: float, gaps_seen: int
) -> str:
    ordered = sorted(gaps)
    median = ordered[len(ordered) // 2]
    basis = (
        f"questions have come a median {median / 60:.1f} minutes apart (last {len(gaps)} gaps)"
        if gaps_seen
        else "no gaps observed yet, so a working session is assumed"
    )
    if ttl == "5m" and not pings:
        what = "5-minute cache entries, let lapse between distant questions: cheaper than "
        what += "keeping them warm or paying twice the input price for 1-hour entries"
    elif ttl == "5m":
        what = (
            f"5-minute cache entries kept warm by up to {pings} keep-warm request(s) "
            f"{every / 60:.1f} minutes apart after each question, then let lapse"
        )
    elif tail_ttl == "1h":
        what = "1-hour cache entries for every document (writing them costs 2x the input "
        what += "price, but they outlive the gaps, and edits are rare enough)"
    else:
        what = "1-hour cache entries for the stable documents (writing them costs 2x the input "
        what += "price, but they outlive the gaps), 5-minute ones for recently edited files"
    if ttl == "1h" and pings:
        what += f", kept warm by up to {pings} hourly keep-warm request(s)"
    return f"{what}: {basis}."
