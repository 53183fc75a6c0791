"""`corpus-cache stats`: spend, savings, hit rate and requests per period, and the state of
each shard's cache, from the ledger. Collecting reads the ledger; rendering is pure.

Spend is shown per backend, never added up across them: the Claude API bills; the offline
emulator does not, and its dollars are what the same requests would cost at API prices on
its approximate token counts. A cache the emulator held lives only as long as the emulator's
process: "warm until" is said of it only while that process runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corpus_cache.accounting.ledger import Ledger, Totals
from corpus_cache.models.pricing import TTL_SECONDS
from corpus_cache.wording import usd

KINDS = ("ask", "warm", "keep-warm")
DAY = 86_400.0
BILLED_BACKEND = "anthropic"  # api/backend.ANTHROPIC: the one backend that bills
OFFLINE_NOTE = (
    "not billed: dollars are what these requests would cost on the API, at the emulator's "
    "approximate token counts"
)
MAYBE_NOTE = (
    "May have been billed: requests sent whose response never began (a connection lost, the "
    "server stopped), so the API may or may not have run them; the dollars are an estimate "
    "of what they would cost if they ran, kept out of spent."
)
NEGATIVE_SAVING = (
    "Saved is negative: each cache write costs more than sending the same tokens uncached "
    "(1.25x the input price for 5 minutes, 2x for an hour), and pays for itself only when "
    "later questions read it (0.1x) before it expires; so far the writes have cost more than "
    "the reads saved."
)


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
class BackendSpend:
    """The periods of one backend's requests."""

    backend: str
    periods: tuple[Period, ...]

    @property
    def billed(self) -> bool:
        return self.backend == BILLED_BACKEND

    def as_dict(self) -> dict[str, Any]:
        return {
            "billed": self.billed,
            **({} if self.billed else {"note": OFFLINE_NOTE}),
            "periods": {p.name: p.as_dict() for p in self.periods},
        }


@dataclass(frozen=True)
class ShardState:
    corpus: str
    shard: int
    tokens: int  # prompt tokens of the shard's last successful request
    ttl: str | None
    warm_until: float | None  # None: never cached (or the ledger does not say)
    last_request: float
    backend: str = BILLED_BACKEND  # the backend whose cache the shard last read or wrote
    # For an emulator's cache: whether the process holding it still runs (None: not known).
    holder_alive: bool | None = None

    def warm(self, now: float) -> bool:
        alive = self.holder_alive is not False
        return alive and self.warm_until is not None and self.warm_until > now

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "shard": self.shard,
            "tokens": self.tokens,
            "ttl": self.ttl,
            "backend": self.backend,
            "warm_until": iso(self.warm_until) if self.warm_until is not None else None,
            "warm": self.warm(now),
            "emulator_stopped": self.holder_alive is False,
            "last_request": iso(self.last_request),
        }


@dataclass(frozen=True)
class Stats:
    corpus: str | None
    now: float
    spends: tuple[BackendSpend, ...]  # one per backend in the ledger, the billed one first
    shards: tuple[ShardState, ...]

    def spend(self, backend: str) -> BackendSpend | None:
        return next((s for s in self.spends if s.backend == backend), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "generated_at": iso(self.now),
            "backends": {s.backend: s.as_dict() for s in self.spends},
            "shards": [s.as_dict(self.now) for s in self.shards],
        }


def start_of_day(now: float) -> float:
    """Local midnight before `now`."""
    moment = datetime.fromtimestamp(now).astimezone()
    return moment.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def collect_stats(ledger: Ledger, corpus: str | None, now: float) -> Stats:
    spends = []
    backends = ledger.backends(corpus)
    for backend in sorted(backends, key=lambda b: (b != BILLED_BACKEND, b)):
        periods = []
        for name, since in (
            ("today", start_of_day(now)),
            ("7 days", now - 7 * DAY),
            ("all time", None),
        ):
            counts = {kind: 0 for kind in KINDS}
            by_kind = ledger.requests_by_kind(corpus, since, backend)
            counts.update({k: n for k, (n, _) in by_kind.items()})
            periods.append(Period(name, since, ledger.totals(corpus, since, backend), counts))
        spends.append(BackendSpend(backend, tuple(periods)))
    return Stats(corpus, now, tuple(spends), shard_states(ledger, corpus))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


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
        holder = touched if touched is not None else row
        alive = process_alive(holder.emulator_pid) if holder.emulator_pid is not None else None
        states.append(
            ShardState(
                row.corpus, row.shard, tokens, row.ttl, warm_until, row.at, holder.backend, alive
            )
        )
    return tuple(states)


# --- rendering (pure) -------------------------------------------------------------------


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")


def _clock(moment: float, now: float) -> str:
    local = datetime.fromtimestamp(moment).astimezone()
    same_day = local.date() == datetime.fromtimestamp(now).astimezone().date()
    return local.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M")


def backend_title(spend: BackendSpend) -> str:
    if spend.billed:
        return "Claude API (billed)"
    name = "Offline emulator" if spend.backend == "offline-emulator" else spend.backend
    return f"{name} ({OFFLINE_NOTE})"


def cache_state(s: ShardState, now: float) -> str:
    """Until when a shard's cache lives, in words: only while it can still be alive."""
    if s.warm_until is None:
        return "never cached"
    if s.holder_alive is False:
        return "gone: the emulator that held it has stopped"
    if s.warm(now):
        maybe = ", if the emulator holding it still runs" if s.backend != BILLED_BACKEND else ""
        maybe = maybe if s.holder_alive is None else ""
        return f"{_clock(s.warm_until, now)}{maybe}"
    return f"cold (since {_clock(s.warm_until, now)})"


def render_stats(stats: Stats) -> str:
    """A table for people: one per backend, never added up across them."""
    head = f"Corpus {stats.corpus}" if stats.corpus else "All corpora"
    lines = [f"{head}, as of {_clock(stats.now, stats.now)}"]
    if not stats.spends:
        lines += ["", "No requests recorded yet."]
    negative = maybe = False
    for spend in stats.spends:
        lines += ["", backend_title(spend) + ":"]
        kinds = [k for k in spend.periods[-1].by_kind]
        columns = ["spent", "uncached", "saved", "hit rate", "requests", *kinds, "errors"]
        lines.append(f"{'':10}" + "".join(f"{c:>11}" for c in columns))
        for p in spend.periods:
            t = p.totals
            negative = negative or t.saved_usd < -0.00005
            cells = [
                usd(t.cost_usd), usd(t.uncached_cost_usd), usd(t.saved_usd),
                f"{t.hit_rate:.1%}", f"{t.requests}", *(f"{p.by_kind.get(k, 0)}" for k in kinds),
                f"{t.errors}",
            ]  # fmt: skip
            lines.append(f"{p.name:10}" + "".join(f"{c:>11}" for c in cells))
        for p in spend.periods:
            if p.totals.maybe_requests:
                maybe = True
                t = p.totals
                lines.append(
                    f"{'':10}may have been billed ({p.name}): {t.maybe_requests} request(s), "
                    f"about {usd(t.maybe_usd)}, not in spent"
                )
    if maybe:
        lines += ["", MAYBE_NOTE]
    if negative:
        lines += ["", NEGATIVE_SAVING]
    if stats.shards:
        lines.append("")
        several = len({s.corpus for s in stats.shards}) > 1
        lines.append(f"{'shard':>7}{'tokens':>11}{'TTL':>6}  warm until")
        for s in stats.shards:
            where = f"  {s.corpus}" if several else ""
            offline = "  (offline emulator)" if s.backend != BILLED_BACKEND else ""
            lines.append(
                f"{s.shard:>7}{s.tokens:>11,}{s.ttl or '-':>6}  {cache_state(s, stats.now)}"
                f"{offline}{where}"
            )
    return "\n".join(lines)
