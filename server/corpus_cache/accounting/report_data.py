"""What the HTML report draws, computed from ledger rows (dicts, oldest first). Pure."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime

from corpus_cache.accounting.ledger import LedgerRow
from corpus_cache.models.pricing import hit_rate

Row = LedgerRow
HOUR = 3600.0
MAX_BUCKETS = 24


def prompt_tokens(row: Row) -> int:
    return int(
        row.input_tokens
        + row.cache_read_tokens
        + row.cache_write_5m_tokens
        + row.cache_write_1h_tokens
    )


def cumulative(rows: Sequence[Row]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(spent, uncached): running dollar totals at each request's time."""
    spent: list[tuple[float, float]] = []
    uncached: list[tuple[float, float]] = []
    paid = would = 0.0
    for row in rows:
        paid += row.cost_usd
        would += row.uncached_cost_usd
        spent.append((row.at, paid))
        uncached.append((row.at, would))
    return spent, uncached


def hit_rate_buckets(rows: Sequence[Row]) -> tuple[str, list[tuple[str, float, str]]]:
    """Hit rate (cache-read tokens / prompt tokens) per hour when the requests span hours,
    else per group of consecutive requests. Returns (what a bar is, bars)."""
    priced = [r for r in rows if r.outcome == "ok" and prompt_tokens(r) > 0]
    if not priced:
        return "no successful requests yet", []
    hours = {int(r.at // HOUR) for r in priced}
    groups: list[tuple[str, list[Row]]]
    if len(hours) >= 2 and priced[-1].at - priced[0].at >= 2 * HOUR:
        by_hour: dict[int, list[Row]] = defaultdict(list)
        for r in priced:
            by_hour[int(r.at // HOUR)].append(r)
        latest = sorted(by_hour)[-MAX_BUCKETS:]
        groups = [(_hour_label(h * HOUR), by_hour[h]) for h in latest]
        what = "per hour with requests" + (" (latest 24)" if len(by_hour) > MAX_BUCKETS else "")
    else:
        size = max(1, math.ceil(len(priced) / MAX_BUCKETS))
        groups = []
        for start in range(0, len(priced), size):
            chunk = priced[start : start + size]
            first, last = start + 1, start + len(chunk)
            label = f"#{first} {chunk[0].kind}" if first == last else f"#{first}–{last}"
            groups.append((label, chunk))
        what = "per request" if size == 1 else f"per {size} requests"
    bars = []
    for label, chunk in groups:
        read = sum(r.cache_read_tokens for r in chunk)
        total = sum(prompt_tokens(r) for r in chunk)
        rate = hit_rate(read, total)
        bars.append(
            (label, rate, f"{label}: {rate:.1%} ({read:,} of {total:,} prompt tokens read)")
        )
    return what, bars


def _hour_label(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().strftime("%d %H:00")


def tokens_by(rows: Sequence[Row], key: Callable[[Row], str]) -> list[tuple[str, list[float]]]:
    """Per group: [read, written 5m, written 1h, uncached input] tokens, in first-seen order."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        group = sums.setdefault(key(row), [0.0, 0.0, 0.0, 0.0])
        group[0] += row.cache_read_tokens
        group[1] += row.cache_write_5m_tokens
        group[2] += row.cache_write_1h_tokens
        group[3] += row.input_tokens
    return list(sums.items())


def shard_label(row: Row) -> str:
    return "no shard" if row.shard is None else f"shard {row.shard}"


def kind_label(row: Row) -> str:
    return str(row.kind)


def miss_reasons(rows: Sequence[Row]) -> list[tuple[str, int, int]]:
    """(reason, requests, tokens the API says were missed), most frequent first."""
    seen: dict[str, list[int]] = {}
    for row in rows:
        reason = row.cache_miss_reason
        if reason:
            entry = seen.setdefault(reason, [0, 0])
            entry[0] += 1
            entry[1] += row.cache_missed_tokens or 0
    return sorted(
        ((reason, n, missed) for reason, (n, missed) in seen.items()), key=lambda e: (-e[1], e[0])
    )
