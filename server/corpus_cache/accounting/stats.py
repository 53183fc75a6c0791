"""`corpus-cache stats`: spend, savings, hit rate and requests per period, and the state of
each shard's cache, from the ledger. Collecting reads the ledger; rendering is pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corpus_cache.accounting.ledger import Ledger, Totals
from corpus_cache.models.pricing import TTL_SECONDS

KINDS = ("ask", "warm", "keep-warm")
DAY = 86_400.0


@dataclass(frozen=True)
class Period:
    name: str  # "today", "7 days", "all time"
    since: float | None
    totals: Totals
    by_kind: dict[str, int]  # every kind in KINDS, and any other the ledger holds

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": iso(self.since) if self.since is not None else None,
            **self.totals.as_dict(),
            "by_kind": self.by_kind,
        }


@dataclass(frozen=True)
class ShardState:
    corpus: str
    shard: int
    tokens: int  # prompt tokens of the shard's last successful request
    ttl: str | None
    warm_until: float | None  # None: never cached (or the ledger does not say)
    last_request: float

    def warm(self, now: float) -> bool:
        return self.warm_until is not None and self.warm_until > now

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "shard": self.shard,
            "tokens": self.tokens,
            "ttl": self.ttl,
            "warm_until": iso(self.warm_until) if self.warm_until is not None else None,
            "warm": self.warm(now),
            "last_request": iso(self.last_request),
        }


@dataclass(frozen=True)
class Stats:
    corpus: str | None
    now: float
    periods: tuple[Period, ...]
    shards: tuple[ShardState, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "generated_at": iso(self.now),
            "periods": {p.name: p.as_dict() for p in self.periods},
            "shards": [s.as_dict(self.now) for s in self.shards],
        }


def start_of_day(now: float) -> float:
    """Local midnight before `now`."""
    moment = datetime.fromtimestamp(now).astimezone()
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def collect_stats(ledger: Ledger, corpus: str | None, now: float) -> Stats:
    periods = []
    for name, since in (
        ("today", start_of_day(now)),
        ("7 days", now - 7 * DAY),
        ("all time", None),
    ):
        counts = {kind: 0 for kind in KINDS}
        counts.update({k: n for k, (n, _) in ledger.requests_by_kind(corpus, since).items()})
        periods.append(Period(name, since, ledger.totals(corpus, since), counts))
    return Stats(corpus, now, tuple(periods), shard_states(ledger, corpus))


def shard_states(ledger: Ledger, corpus: str | None) -> tuple[ShardState, ...]:
    """Per shard: tokens and TTL of its last request, and until when the entry it last read
    or wrote stays alive (a TTL counts from the start of the request)."""
    cached = {(r.corpus, r.shard): r for r in ledger.last_by_shard(corpus, touched_cache=True)}
    states = []
    for row in ledger.last_by_shard(corpus):
        if row.shard is None:  # last_by_shard keeps rows of a shard only
            continue
        touched = cached.get((row.corpus, row.shard))
        warm_until = None
        if touched is not None and touched.ttl in TTL_SECONDS:
            started = touched.at - (touched.latency_ms or 0.0) / 1000
            warm_until = started + TTL_SECONDS[touched.ttl]
        tokens = row.input_tokens + row.cache_read_tokens
        tokens += row.cache_write_5m_tokens + row.cache_write_1h_tokens
        states.append(ShardState(row.corpus, row.shard, tokens, row.ttl, warm_until, row.at))
    return tuple(states)


# --- rendering (pure) -------------------------------------------------------------------


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")


def _clock(moment: float, now: float) -> str:
    local = datetime.fromtimestamp(moment).astimezone()
    same_day = local.date() == datetime.fromtimestamp(now).astimezone().date()
    return local.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M")


def _usd(value: float) -> str:
    return f"{'-' if value < 0 else ''}${abs(value):.4f}"


def render_stats(stats: Stats) -> str:
    """A table for people."""
    head = f"Corpus {stats.corpus}" if stats.corpus else "All corpora"
    lines = [f"{head}, as of {_clock(stats.now, stats.now)}", ""]
    kinds = [k for k in stats.periods[-1].by_kind]
    columns = ["spent", "uncached", "saved", "hit rate", "requests", *kinds, "errors"]
    lines.append(f"{'':10}" + "".join(f"{c:>11}" for c in columns))
    for p in stats.periods:
        t = p.totals
        cells = [
            _usd(t.cost_usd), _usd(t.uncached_cost_usd), _usd(t.saved_usd),
            f"{t.hit_rate:.1%}", f"{t.requests}", *(f"{p.by_kind.get(k, 0)}" for k in kinds),
            f"{t.errors}",
        ]  # fmt: skip
        lines.append(f"{p.name:10}" + "".join(f"{c:>11}" for c in cells))
    if stats.shards:
        lines.append("")
        several = len({s.corpus for s in stats.shards}) > 1
        lines.append(f"{'shard':>7}{'tokens':>11}{'TTL':>6}  warm until")
        for s in stats.shards:
            if s.warm_until is None:
                until = "never cached"
            elif s.warm(stats.now):
                until = _clock(s.warm_until, stats.now)
            else:
                until = f"cold (since {_clock(s.warm_until, stats.now)})"
            where = f"  {s.corpus}" if several else ""
            lines.append(f"{s.shard:>7}{s.tokens:>11,}{s.ttl or '-':>6}  {until}{where}")
    return "\n".join(lines)
