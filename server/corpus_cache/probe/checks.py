"""What `corpus-cache probe` sends, what it expects, and what it concludes. Pure.

Each step's prompts are built here (`ProbePrompt`), priced here before they are sent
(`worst_usd`, `step_usd`), and compared here with the model table (`Finding`); the runner
(probe/runner.py) only counts, sends and waits. The facts checked are those of
shared/reference/anthropic-caching.md: the minimum cacheable length, the 20-position
lookback, the 1h-before-5m billing split, the marker upgrade, the TTLs and refresh, the
multipliers, and count_tokens against the usage billed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from corpus_cache.api.spending import Bound
from corpus_cache.models.catalog import ModelSpec
from corpus_cache.models.limits import LimitsTable
from corpus_cache.models.pricing import Ttl, Usage, cost_usd

Verdict = Literal["match", "mismatch", "skipped"]
STOPPED = "(stopped)"  # the step of a request that failed: the probe ends there

# Counts and the usage billed may differ by a few tokens the API adds (the reference:
# count_tokens "may include a few system-added tokens"): equal within this.
TOKEN_SLACK = 16
TOKEN_SLACK_SHARE = 0.02
# A multiplier derived from a bill matches the table's within this share.
MULTIPLIER_SLACK = 0.01
# The search for the minimum stops once the bracket (not cached, cached] is this narrow.
BRACKET_RATIO = 1 / 0.9 + 1e-9
BELOW = 0.9  # the length just under the table's minimum that must not be cached
# Minutes the timed checks wait (--wait): a read after 4 minutes refreshes a 5-minute
# entry, which a read 4 minutes later still finds; 6 minutes after that it has lapsed.
REFRESH_WAIT = 240.0
LAPSE_WAIT = 360.0

_WORDS = (
    "ledger anchor harbour signal meadow copper lantern orchard quarry ribbon summit "
    "thicket valley willow beacon canyon delta ember falcon glacier"
).split()


def filler(sentences: int, salt: str) -> str:
    """Plain English-like text of `sentences` sentences, the same for the same arguments;
    `salt` (the run's nonce) starts it, so that no earlier run's cache entry matches."""
    parts = [f"Probe {salt}."]
    for i in range(sentences):
        a, b, c = (_WORDS[(i * k + k) % len(_WORDS)] for k in (1, 3, 7))
        parts.append(f"The {a} near the {b} keeps {c} number {i}.")
    return " ".join(parts)


@dataclass(frozen=True)
class ProbePrompt:
    """One user message of text blocks, with breakpoints on some of them."""

    blocks: tuple[str, ...]
    breakpoints: Mapping[int, Ttl]

    def content(self, upto: int | None = None) -> list[dict[str, Any]]:
        """The message's content blocks (through block `upto`, for counting a prefix)."""
        end = len(self.blocks) if upto is None else upto + 1
        content: list[dict[str, Any]] = []
        for i, text in enumerate(self.blocks[:end]):
            block: dict[str, Any] = {"type": "text", "text": text}
            ttl = self.breakpoints.get(i)
            if ttl is not None:
                block["cache_control"] = (
                    {"type": "ephemeral", "ttl": "1h"} if ttl == "1h" else {"type": "ephemeral"}
                )
            content.append(block)
        return content

    def params(self, model: str) -> dict[str, Any]:
        """A `max_tokens: 0` request: it writes or reads the cache and generates nothing."""
        return {
            "model": model,
            "max_tokens": 0,
            "messages": [{"role": "user", "content": self.content()}],
        }


@dataclass(frozen=True)
class Sized:
    """A prompt with its counted tokens: through each breakpoint's block, and in all."""

    prompt: ProbePrompt
    through: Mapping[int, int]  # breakpoint block -> tokens of the prompt through it
    total: int


def close(measured: int, expected: int) -> bool:
    """Token figures that agree, allowing for what the API adds to a count."""
    return abs(measured - expected) <= max(TOKEN_SLACK, TOKEN_SLACK_SHARE * expected)


def worst_usd(sized: Sized, spec: ModelSpec) -> float:
    """The most the request can cost: every token through a breakpoint written at the
    costliest TTL from there on, the rest as input, with the tokens' slack on top."""
    multiplier = {"5m": spec.cache_write_5m_multiplier, "1h": spec.cache_write_1h_multiplier}
    written = max(sized.through.values(), default=0)
    ttls = [multiplier[t] for t in sized.prompt.breakpoints.values()]
    cached = written * max(ttls, default=1.0)
    tokens = (cached + sized.total - written) * (1 + TOKEN_SLACK_SHARE) + TOKEN_SLACK
    price, _ = spec.prices_at(sized.total)
    return math.ceil(tokens * price) / 1e6


def bound_of(sized: Sized, spec: ModelSpec) -> Bound:
    """The request's tokens as the caller's rate limits and failure rows take them
    (api/spending.Bound): each stretch up to a breakpoint at the costliest TTL from there
    on, the rest uncached, no output."""
    multiplier = {"5m": spec.cache_write_5m_multiplier, "1h": spec.cache_write_1h_multiplier}
    points = sorted(sized.through.items())
    segments: list[tuple[int, float]] = []
    before = 0
    for i, (_, tokens) in enumerate(points):
        costliest = max(multiplier[sized.prompt.breakpoints[b]] for b, _ in points[i:])
        segments.append((tokens - before, costliest))
        before = tokens
    return Bound(tuple(segments), sized.total - before, 0)


def cached(usage: Usage) -> bool:
    return usage.cache_read_tokens > 0 or usage.cache_write_tokens > 0


# --- the minimum cacheable length --------------------------------------------------------


def next_length(not_cached: int | None, was_cached: int | None, table: int) -> int | None:
    """The next prompt length to try in the search for the minimum, from the longest
    length seen not cached and the shortest seen cached; None once the bracket is narrow
    (or the minimum is below any length worth trying). The table's figure first, then just
    below it; then by doubling or halving to a bracket, then a power of two inside it (the
    documented minimums all are), then geometric halves."""
    if was_cached is None and not_cached is None:
        return table
    if not_cached is None:
        assert was_cached is not None
        if was_cached <= 16:
            return None
        return math.floor(was_cached * BELOW) if was_cached >= table else was_cached // 2
    if was_cached is None:
        return not_cached * 2
    if was_cached <= not_cached * BRACKET_RATIO:
        return None
    powers = [p for p in (1 << k for k in range(4, 24)) if not_cached < p < was_cached]
    if powers:
        return powers[-1]
    return max(not_cached + 1, math.floor(math.sqrt(not_cached * was_cached)))


# --- the lookback ------------------------------------------------------------------------


def lookback_prompt(head: str, branch: str, distance: int) -> ProbePrompt:
    """`head` (long enough to cache, its entry written by an earlier request), then
    `distance` short blocks of their own branch, a 5-minute breakpoint on the last: the
    lookback from it reaches the head's entry if it walks `distance` + 1 positions."""
    markers = tuple(f"Marker {branch}-{k}." for k in range(1, distance + 1))
    return ProbePrompt((head, *markers), {distance: "5m"})


def next_distance(hit: int, missed: int) -> int | None:
    """The next distance to try, between the farthest that hit and the nearest that
    missed, a third of the way from the hit: a miss writes the whole head again, a hit
    only reads it, so the search leans towards hits. None once they are neighbours."""
    if missed - hit <= 1:
        return None
    return hit + max(1, (missed - hit) // 3)


# --- findings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What one check found: the table's figure, what was measured, and the fields of a
    models file that would make the table agree (`override`)."""

    step: str
    verdict: Verdict
    table: str
    measured: str
    detail: str = ""
    override: Mapping[str, int | float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "verdict": self.verdict,
            "table": self.table,
            "measured": self.measured,
            "detail": self.detail,
            "override": dict(self.override),
        }


def skipped(step: str, table: str, why: str) -> Finding:
    return Finding(step, "skipped", table, "-", why)


def minimum_finding(tried: Sequence[tuple[int, bool]], table: int, stopped: str = "") -> Finding:
    """The minimum cacheable length from the lengths tried (tokens, cached?): it lies
    above the longest not cached and at or below the shortest cached."""
    was = min((n for n, c in tried if c), default=None)
    not_ = max((n for n, c in tried if not c), default=None)
    shown = f"{table:,} tokens"
    low = f"{not_:,}" if not_ is not None else "?"
    high = f"{was:,}" if was is not None else "?"
    measured = f"above {low}, at most {high} tokens"
    why = f"; {stopped}" if stopped else ""
    if was is not None and not_ is not None and not_ >= was:
        return Finding(
            "minimum", "mismatch", shown, "inconsistent",
            f"cached at {was:,} tokens but not at {not_:,}",
        )  # fmt: skip
    if was is not None and not_ is not None and not_ < table <= was:
        return Finding("minimum", "match", shown, measured)
    if was is not None and was < table:
        return Finding(
            "minimum", "mismatch", shown, measured,
            "cached below the table's minimum; the shortest length cached is written" + why,
            {"min_cacheable_tokens": was},
        )  # fmt: skip
    if not_ is not None and not_ >= table:
        override = {"min_cacheable_tokens": was} if was is not None else {}
        detail = "not cached at the table's minimum" + (
            "; the shortest length cached is written" if was is not None else ""
        )
        return Finding("minimum", "mismatch", shown, measured, detail + why, override)
    return skipped("minimum", shown, stopped or "not enough lengths were tried")


def lookback_finding(hit: int | None, missed: int | None, table: int, stopped: str = "") -> Finding:
    """`hit`: the farthest distance (blocks after the entry's own) that read the entry;
    `missed`: the nearest that did not. The lookback walks distance + 1 positions."""
    shown = f"{table} positions"
    reach_hit = hit + 1 if hit is not None else None
    reach_miss = missed + 1 if missed is not None else None
    measured = (f"a hit {reach_hit} positions back" if reach_hit else "no hit") + (
        f", a miss {reach_miss} back" if reach_miss else ""
    )
    if reach_hit == table and reach_miss == table + 1:
        return Finding("lookback", "match", shown, measured)
    if reach_hit is not None and reach_hit >= table and reach_miss is None:
        return Finding("lookback", "mismatch", shown, measured, "the lookback reaches farther")
    if reach_hit is None and reach_miss is None:
        return skipped("lookback", shown, stopped or "nothing was tried")
    if reach_miss is not None and reach_miss <= table:
        safe = reach_hit or 1
        return Finding(
            "lookback", "mismatch", shown, measured,
            f"the lookback is shorter; {safe} is written (a shorter belief is safe)"
            + (f"; {stopped}" if stopped else ""),
            {"cache_lookback": safe},
        )  # fmt: skip
    return Finding(
        "lookback", "mismatch", shown, measured, "the lookback reaches beyond a miss at 21"
    )


def usage_finding(step: str, seen: Usage, expected: Usage, what: str, detail: str = "") -> Finding:
    """A request billed as the documented rules say, token figure by token figure."""
    pairs = {
        "read": (seen.cache_read_tokens, expected.cache_read_tokens),
        "1h write": (seen.cache_write_1h_tokens, expected.cache_write_1h_tokens),
        "5m write": (seen.cache_write_5m_tokens, expected.cache_write_5m_tokens),
    }
    measured = ", ".join(f"{name} {got:,}" for name, (got, _) in pairs.items())
    table = ", ".join(f"{name} {want:,}" for name, (_, want) in pairs.items())
    ok = all(close(got, want) for got, want in pairs.values())
    return Finding(step, "match" if ok else "mismatch", f"{what}: {table}", measured, detail)


MultiplierField = Literal[
    "cache_read_multiplier", "cache_write_5m_multiplier", "cache_write_1h_multiplier"
]


def multiplier_of(
    usd: float, usage: Usage, spec: ModelSpec, which: MultiplierField
) -> float | None:
    """The multiplier that makes `usage` cost `usd`, the others as the table says; None
    when the usage has none of the tokens it multiplies."""
    tokens = {
        "cache_read_multiplier": usage.cache_read_tokens,
        "cache_write_5m_multiplier": usage.cache_write_5m_tokens,
        "cache_write_1h_multiplier": usage.cache_write_1h_tokens,
    }
    if tokens[which] == 0:
        return None
    input_price, _ = spec.prices_at(usage.prompt_tokens)
    without = spec.model_copy(update={which: 0.0})
    rest = cost_usd(usage, without)
    return (usd - rest) / (tokens[which] * input_price * 1e-6)


def multiplier_finding(
    which: MultiplierField, measured: float | None, spec: ModelSpec, why_not: str
) -> Finding:
    step = which.removesuffix("_multiplier").replace("_", " ")
    table = getattr(spec, which)
    if measured is None:
        return skipped(step, f"{table:g}x", why_not)
    shown = f"{measured:.4g}x"
    if abs(measured - table) <= MULTIPLIER_SLACK * max(table, 1e-9):
        return Finding(step, "match", f"{table:g}x", shown)
    return Finding(step, "mismatch", f"{table:g}x", shown, "", {which: round(measured, 4)})


def drift_finding(counted: int, billed: int) -> Finding:
    """count_tokens against the prompt tokens billed for the same prompt, in percent."""
    drift = 100.0 * (counted - billed) / billed if billed else 0.0
    measured = f"{counted:,} counted, {billed:,} billed ({drift:+.2f}%)"
    verdict: Verdict = "match" if close(counted, billed) else "mismatch"
    return Finding("count_tokens drift", verdict, "equal, within a few tokens", measured)


def tier_finding(figures: Mapping[str, int], table: LimitsTable, model: str) -> Finding:
    """The tier whose figures the `anthropic-ratelimit-*` headers state (requests, input
    and output tokens per minute), for the model's class."""
    if not figures:
        return skipped("rate limits", "by tier", "no anthropic-ratelimit-* headers came back")
    model_class = table.class_of(model)
    shown = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in sorted(figures.items()))
    for name, tier in table.tiers.items():
        limits = tier.classes.get(model_class)
        if limits is None:
            continue
        wanted = {"requests": limits.rpm, "input_tokens": limits.itpm, "output_tokens": limits.otpm}
        if all(wanted.get(k) == v for k, v in figures.items()):
            return Finding(
                "rate limits", "match", f"tier {name}", f"tier {name}: {shown} a minute",
                f"pass --tier {name} to serve",
            )  # fmt: skip
    return Finding(
        "rate limits", "mismatch", f"class {model_class}", f"{shown} a minute",
        "no tier of the limits table has these figures (see docs/models.md)",
    )  # fmt: skip


# --- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    model: str
    backend: str
    max_usd: float
    spent_usd: float
    findings: tuple[Finding, ...]

    @property
    def failed(self) -> bool:
        return any(f.step == STOPPED for f in self.findings)

    @property
    def overrides(self) -> dict[str, int | float]:
        merged: dict[str, int | float] = {}
        for finding in self.findings:
            merged.update(finding.override)
        return merged

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "max_usd": self.max_usd,
            "spent_usd": round(self.spent_usd, 6),
            "findings": [f.as_dict() for f in self.findings],
            "overrides": self.overrides,
        }


def render_report(report: Report) -> str:
    lines = [
        f"corpus-cache probe: {report.model} on {report.backend}, "
        f"${report.spent_usd:.4f} spent of ${report.max_usd:.2f}",
    ]
    width = max((len(f.step) for f in report.findings), default=0)
    for f in report.findings:
        line = f"  {f.verdict:<8} {f.step:<{width}}  table: {f.table}; measured: {f.measured}"
        lines.append(line + (f" ({f.detail})" if f.detail else ""))
    counts = {
        v: sum(1 for f in report.findings if f.verdict == v)
        for v in ("match", "mismatch", "skipped")
    }
    lines.append(", ".join(f"{n} {v}" for v, n in counts.items()))
    if report.overrides:
        lines.append("write these with --write-overrides FILE, then serve --models-file FILE")
    return "\n".join(lines)


def render_overrides(model: str, overrides: Mapping[str, int | float], note: str) -> str:
    """A models file (models/catalog.py's format) with what was measured for `model`."""
    lines = [f"# {note}", "", "[[models]]", f'id = "{model}"']
    for name, value in sorted(overrides.items()):
        lines.append(f"{name} = {value!r}")
    return "\n".join(lines) + "\n"
