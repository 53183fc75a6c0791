"""A prepared request: everything decided for one request to the Messages API, once.

The engine decides a request's shard, markers, the anchors it marks and their TTLs, and
builds its params; the result is this one immutable value, which the API caller sends and
records, and from which the engine learns which cache entries the response made alive.
Nothing downstream parses the params back. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal

from corpus_cache.api.ratelimits import Demand
from corpus_cache.api.spending import Bound, request_bound
from corpus_cache.models.catalog import ModelSpec
from corpus_cache.models.pricing import Ttl

# "probe": `corpus-cache probe`'s; "limits": the one small request that learns the
# account's rate limits (limits_request).
RequestKind = Literal["ask", "warm", "keep-warm", "probe", "limits"]

# What that request asks: a few tokens in, one out. Every Messages response carries the
# `anthropic-ratelimit-*` headers; a count_tokens response carries only counting's own.
LIMITS_QUESTION = "Hi"


@dataclass(frozen=True)
class PreparedRequest:
    kind: RequestKind
    shard: int
    snapshot: int  # the version of the corpus snapshot its documents come from
    params: Mapping[str, Any]  # the Messages API body, as sent
    marked: tuple[int, ...]  # the anchors whose blocks carry a breakpoint, in order
    ttls: Mapping[int, Ttl]  # each anchor's TTL (those not marked are not written)
    identities: Mapping[int, str]  # each anchor's cache entry identity
    alive: frozenset[int]  # the anchors believed alive when it was prepared
    corpus_end: int | None  # the anchor ending the corpus, if it is cached at all
    prepared_at: float
    bound: Bound  # the most it can cost, in tokens (api/spending.request_bound)
    estimate_usd: float  # that bound in dollars: what the daily cap checks
    # The prompt's tokens through the furthest anchor believed alive that its breakpoints
    # reach back to (read from the cache, if the belief holds), marked or not.
    read_tokens: int = 0
    # (path, content key) of the document blocks through the last breakpoint, when the
    # prompt through it holds only the head (framing, system prompt) and those blocks as
    # they are counted: what its usage makes exact (api/learned.py). None otherwise.
    prefix: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        # Read-only views: the value is shared by the caller, the engine and the ledger.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "ttls", MappingProxyType(dict(self.ttls)))
        object.__setattr__(self, "identities", MappingProxyType(dict(self.identities)))

    @property
    def writes(self) -> tuple[str, ...]:
        """Identities of the entries this request writes: marked, and not believed alive."""
        return tuple(self.identities[a] for a in self.marked if a not in self.alive)

    @property
    def end_ttl(self) -> Ttl | None:
        """The TTL it gives the end of the corpus: the ledger's `ttl` for the request."""
        return self.ttls[self.corpus_end] if self.corpus_end is not None else None

    def _read_segments(self) -> int:
        """How many of the bound's segments lie up to the last breakpoint believed alive."""
        # The last breakpoints are the marked anchors (a system breakpoint may come first).
        offset = len(self.bound.segments) - len(self.marked)
        read_up_to = 0
        for i, anchor in enumerate(self.marked):
            if anchor in self.alive and offset + i >= 0:
                read_up_to = offset + i + 1
        return read_up_to

    def demand(self) -> Demand:
        """What it takes from the rate-limit buckets, as far as can be known beforehand:
        input tokens past the last breakpoint believed alive (cache reads do not count),
        and the output its max_tokens reserves."""
        segments = [tokens for tokens, _ in self.bound.segments]
        written = sum(segments[self._read_segments() :]) + self.bound.uncached
        # A breakpoint past an alive entry reads it through the lookback: a question that
        # adds a marker block reads the corpus and writes a few tokens.
        written = min(written, max(0, self.bound.prompt_tokens - self.read_tokens))
        return Demand(input_tokens=written, output_tokens=self.bound.output)

    def expected_usd(self, model: ModelSpec) -> float:
        """What it would cost if it ran as believed: the entries believed alive read, the
        others written, its answer left out (an estimate, for a request whose usage is not
        known: spending.Bound.expected_usd)."""
        return self.bound.expected_usd(model, self._read_segments())

    def body(self) -> dict[str, Any]:
        """A fresh copy of the params for the SDK, which takes keyword arguments."""
        return dict(self.params)

    def warming(self, kind: RequestKind, model: ModelSpec) -> PreparedRequest:
        """The same request with `max_tokens: 0`: it writes (or reads) the cache and
        generates nothing, so it costs no output."""
        bound = replace(self.bound, output=0)
        params = {**self.params, "max_tokens": 0}
        return replace(self, kind=kind, params=params, bound=bound, estimate_usd=bound.usd(model))


def limits_request(model: ModelSpec, now: float) -> PreparedRequest:
    """The cheapest request whose response states the account's rate limits: no corpus,
    no cache_control, a two-letter question and `max_tokens: 1` (a few millionths of a
    dollar on any model)."""
    params = {
        "model": model.id,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": LIMITS_QUESTION}],
    }
    bound = request_bound(params, [], 0, model)
    return PreparedRequest(
        kind="limits", shard=0, snapshot=0, params=params, marked=(), ttls={},
        identities={}, alive=frozenset(), corpus_end=None, prepared_at=now, bound=bound,
        estimate_usd=bound.usd(model),
    )  # fmt: skip
