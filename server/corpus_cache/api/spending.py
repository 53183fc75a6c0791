"""Spending: the most a request can cost, worked out before it is sent, and the daily cap
(--max-usd-per-day) that refuses one whose bound would take the spend over it.

Every request that spends (an ask, a warm, a prewarm, a keep-warm) is priced when it is
prepared (cache/prepare.py) with `request_bound`, and the API caller (api/caller.py) checks
it with `DailyCap.within` before sending it. The bound is never below what the API bills:

- the system prompt and each document block at the tokens count_tokens gave for them
  (what billing counts), the document's framing included;
- text never counted (the question, a conversation's turns, a document's `context`,
  marker blocks) at `text_bound`, more tokens than any tokenizer we know gives for it,
  plus an allowance for the framing of every message and block;
- every token up to a breakpoint as written to the cache, at the write price of the
  costliest TTL from there on, whatever is believed cached (a belief can be wrong: an
  entry may have been evicted); after the last breakpoint at the input price;
- the answer at its full `max_tokens`;

and the dollars are rounded up to the next millionth."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from corpus_cache.accounting.shared import Reservation
from corpus_cache.config import Settings
from corpus_cache.errors import BudgetExceededError
from corpus_cache.models.catalog import ModelSpec

DAY_SECONDS = 86_400.0
# A reservation of a request under way that is never released (its process hung) lapses
# after this long; one of a process that is gone lapses at once (accounting/shared.py).
RESERVATION_SECONDS = 3_600.0

# Tokens per UTF-8 byte that no tokenizer exceeds: byte-level BPE gives at most 1; the
# emulator's dense family gives 1.3 per punctuation mark. A word is never more.
TOKENS_PER_BYTE = 1.3
REQUEST_ALLOWANCE = 64  # framing of the request as a whole
MESSAGE_ALLOWANCE = 8  # each message's role header
BLOCK_ALLOWANCE = 4  # each content block not counted with count_tokens


def text_bound(text: str) -> int:
    """More tokens than `text` can cost under any tokenizer (see TOKENS_PER_BYTE)."""
    return math.ceil(TOKENS_PER_BYTE * len(text.encode("utf-8", "surrogatepass"))) + 1


@dataclass(frozen=True)
class Bound:
    """A request's tokens at most: `segments` are (tokens, write multiplier) up to each
    breakpoint, `uncached` the tokens after the last one, `output` the answer's max."""

    segments: tuple[tuple[int, float], ...]
    uncached: int
    output: int

    @property
    def prompt_tokens(self) -> int:
        return sum(t for t, _ in self.segments) + self.uncached

    def usd(self, model: ModelSpec) -> float:
        input_price, output_price = model.prices_at(self.prompt_tokens)
        prompt = sum(t * m for t, m in self.segments) + self.uncached
        dollars = (prompt * input_price + self.output * output_price) * 1e-6
        return math.ceil(dollars * 1e6 - 1e-9) / 1e6

    def expected_usd(self, model: ModelSpec, read_segments: int) -> float:
        """An estimate, not a bound: the prompt as billed if the first `read_segments`
        segments are read from the cache and the others written, without the answer (its
        length is not known)."""
        input_price, _ = model.prices_at(self.prompt_tokens)
        read = model.cache_read_multiplier
        prompt = sum(
            t * (read if i < read_segments else m) for i, (t, m) in enumerate(self.segments)
        )
        return (prompt + self.uncached) * input_price * 1e-6


def request_bound(
    params: Mapping[str, Any], document_tokens: Sequence[int], instructions_tokens: int,
    model: ModelSpec,
) -> Bound:  # fmt: skip
    """The most `params` (a Messages request as request.build_request makes it) can cost.
    `document_tokens`: the counted tokens of its document blocks in prompt order (a plan's
    `sizes`; only as many as the request carries are used); `instructions_tokens`: the
    counted system prompt."""
    ttl_multiplier = {
        "5m": model.cache_write_5m_multiplier,
        "1h": model.cache_write_1h_multiplier,
    }
    sizes = iter(document_tokens)
    pieces: list[tuple[int, float | None]] = []  # tokens, and the write multiplier of a breakpoint
    system = params.get("system") or []
    for i, block in enumerate(system):
        tokens = instructions_tokens if i == 0 else text_bound(str(block.get("text", "")))
        pieces.append((tokens + BLOCK_ALLOWANCE, _breakpoint(block, ttl_multiplier)))
    for message in params.get("messages") or []:
        pieces.append((MESSAGE_ALLOWANCE, None))
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            if block.get("type") == "document":
                tokens = next(sizes) + BLOCK_ALLOWANCE
                if block.get("context"):
                    tokens += text_bound(str(block["context"]))
            else:
                tokens = text_bound(str(block.get("text", ""))) + BLOCK_ALLOWANCE
            pieces.append((tokens, _breakpoint(block, ttl_multiplier)))
    pieces[0] = (pieces[0][0] + REQUEST_ALLOWANCE, pieces[0][1]) if pieces else (0, None)
    last = max((i for i, (_, m) in enumerate(pieces) if m is not None), default=-1)
    segments: list[tuple[int, float]] = []
    running = 0
    for i, (tokens, multiplier) in enumerate(pieces[: last + 1]):
        running += tokens
        if multiplier is not None:
            # Tokens up to a breakpoint are written at its TTL's price, or a later one's.
            costliest = max(m for _, m in pieces[i : last + 1] if m is not None)
            segments.append((running, costliest))
            running = 0
    uncached = sum(t for t, _ in pieces[last + 1 :])
    return Bound(tuple(segments), uncached, int(params.get("max_tokens") or 0))


def _breakpoint(block: Mapping[str, Any], multipliers: Mapping[str, float]) -> float | None:
    control = block.get("cache_control")
    if not isinstance(control, Mapping):
        return None
    return multipliers["1h" if control.get("ttl") == "1h" else "5m"]


# Set while a question's requests are under one check (a fan-out asks several shards at
# once): each request is counted there already, and all are refused or sent as one.
_checked: ContextVar[bool] = ContextVar("corpus_cache_cap_checked", default=False)


class Reservations(Protocol):
    """The cap's check shared by the instances on one state folder: the spend and every
    instance's requests under way read, and this one's reserved, in one transaction."""

    def reserve(
        self, usd: float, *, cap: float, since: float, now: float, hold: float
    ) -> Reservation | None: ...

    def release(self, key: int) -> None: ...


class DailyCap:
    def __init__(
        self,
        settings: Settings,
        spent_since: Callable[[float], float],
        clock: Callable[[], float],
        reservations: Reservations | None = None,
    ) -> None:
        """`spent_since(t)`: what has been spent on the corpus since time `t`. The cap is
        read from `settings` at each request, so a changed cap applies at once.
        `reservations`: requests under way, known to every instance sharing the ledger
        (without it, or when the ledger cannot be used, this instance's own)."""
        self._settings = settings
        self._spent_since = spent_since
        self._clock = clock
        self._reservations = reservations
        self._pending_usd = 0.0  # bounds of requests sent and not yet recorded

    @contextmanager
    def within(self, estimate: float, what: str = "question") -> Iterator[None]:
        """Refuse, sending nothing, if the last 24 hours' spend on this corpus, plus what
        requests under way may cost, plus `estimate`, exceeds the daily cap. `what`: the
        request, as the refusal names it. Inside another `within` (a question's requests),
        the outer check counted this one already."""
        if _checked.get():
            yield
            return
        key = self._check(estimate, what)
        token = _checked.set(True)
        self._pending_usd += estimate
        try:
            yield
        finally:
            _checked.reset(token)
            self._pending_usd = max(0.0, self._pending_usd - estimate)
            if key is not None and self._reservations is not None:
                self._reservations.release(key)

    def hold(self, estimate: float) -> Callable[[], None]:
        """Count `estimate` as under way, refusing nothing, until the function returned is
        called: a request whose question gave up waiting (its `within` is over) is still
        read, and billed, to its end. Without this the cap would not count it meanwhile,
        here or in another instance, and two could pass a cap only one fits."""
        self._pending_usd += estimate
        key = None
        if self._settings.max_usd_per_day is not None and self._reservations is not None:
            now = self._clock()
            held = self._reservations.reserve(
                estimate, cap=math.inf, since=now - DAY_SECONDS, now=now, hold=RESERVATION_SECONDS
            )
            key = held.key if held is not None else None
        released = [False]

        def release() -> None:
            if released[0]:
                return
            released[0] = True
            self._pending_usd = max(0.0, self._pending_usd - estimate)
            if key is not None and self._reservations is not None:
                self._reservations.release(key)

        return release

    def _check(self, estimate: float, what: str) -> int | None:
        """Raise if `estimate` does not fit; the key of its reservation, if one was made."""
        cap = self._settings.max_usd_per_day
        if cap is None:
            return None
        now = self._clock()
        if self._reservations is not None:
            shared = self._reservations.reserve(
                estimate, cap=cap, since=now - DAY_SECONDS, now=now, hold=RESERVATION_SECONDS
            )
            if shared is not None:
                if shared.key is None:
                    raise _refused(estimate, what, shared.spent_usd, shared.reserved_usd, cap)
                return shared.key
        spent = self._spent_since(now - DAY_SECONDS)
        if spent + self._pending_usd + estimate > cap:
            raise _refused(estimate, what, spent, self._pending_usd, cap)
        return None


def _refused(
    estimate: float, what: str, spent: float, under_way_usd: float, cap: float
) -> BudgetExceededError:
    under_way = f" and ${under_way_usd:.4f} for requests under way" if under_way_usd else ""
    return BudgetExceededError(
        f"not sent: this {what} may cost up to ${estimate:.4f}, and "
        f"${spent:.4f} has been spent on this corpus in the last 24 hours"
        f"{under_way}, which would exceed the cap of ${cap:.2f} a day "
        "(--max-usd-per-day). Raise the cap, or wait until earlier spend is more "
        "than 24 hours old.",
        spent_usd=spent,
        estimate_usd=estimate,
        cap_usd=cap,
    )
