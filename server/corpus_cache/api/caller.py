"""The one caller: every request to the Messages API goes through here.

Asking (streamed), warming and keeping warm (`max_tokens: 0`), and counting tokens: each
is sent by `ApiCaller`, which is the one place that checks the spending guard before a
request that spends, makes its attempts (api/retrying.py decides whether and when to try
again; the SDK makes one attempt per call), prices what the API reports, records a ledger
row for every attempt (billed, not billed, or perhaps billed: docs/accounting.md), and
turns a failure into an `ApiCallError` that says what happened and what to do. Before each
attempt is sent it waits in one queue (api/scheduler.py) until the account's rate limits
hold it (api/ratelimits.py), questions first, then background work, then counting
(api/scheduling.py), and one that could never fit is refused unsent; every response's
`anthropic-ratelimit-*` headers, 429s included, update what is known of the buckets. A
429 is tried again after the longer of its retry-after and what the buckets need.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import anthropic
import anyio
from anthropic.types import Message, MessageParam

from corpus_cache.accounting.ledger import MAYBE, UNBILLED, Ledger, RequestRecord
from corpus_cache.accounting.shared import Shared
from corpus_cache.api import retrying
from corpus_cache.api.backend import (
    API_FAILURES,
    OFFLINE_EMULATOR,
    Backend,
    backend_of_response,
    describe_api_error,
    failure_of,
)
from corpus_cache.api.outcomes import billing_of, cache_miss, cancelled_text, failure_text
from corpus_cache.api.prepared import PreparedRequest, RequestKind, limits_request
from corpus_cache.api.ratelimits import Demand, RateLimits, wait_after_refusal
from corpus_cache.api.scheduler import NeverFits, Scheduler, WaitingNote
from corpus_cache.api.scheduling import Pool, Priority
from corpus_cache.api.spending import DailyCap
from corpus_cache.errors import (
    ApiCallError,
    BeyondRateLimitError,
    BudgetExceededError,
    IncompleteResponseError,
    RateLimitWaitError,
)
from corpus_cache.models.catalog import ModelSpec
from corpus_cache.models.pricing import Usage, cost_usd, uncached_cost_usd
from corpus_cache.wording import about_seconds, plural

log = logging.getLogger(__name__)

# How a refusal of the daily cap names each kind of request.
_WHAT: dict[RequestKind, str] = {
    "ask": "question",
    "warm": "warm request",
    "keep-warm": "keep-warm request",
    "probe": "probe request",
    "limits": "request for the account's rate limits",
}
# What a row says of an attempt cancelled with nothing else known.
CANCELLED = "the call was cancelled"
# What an attempt can fail with: the API's failures, and a stream that stopped sending.
_FAILURES: tuple[type[Exception], ...] = (*API_FAILURES, TimeoutError)


def _always() -> bool:
    return True


# A wait shorter than this is the queue's own bookkeeping, not the limits: not logged.
_WAIT_WORTH_SAYING = 0.5


@dataclass
class _Admission:
    """Whether a request got past the rate limits, so may have been sent."""

    past: bool = False


@dataclass(frozen=True)
class Sent:
    """A request the API answered, as priced and recorded."""

    message: Message
    usage: Usage
    cost_usd: float
    uncached_cost_usd: float
    latency_ms: float
    backend: str  # the server that actually answered (backend.backend_of_response)
    ledger_note: str | None  # why the ledger could not record it yet, and where it waits
    attempts: int = 1


@dataclass(frozen=True)
class Counted:
    """A count of tokens, and the backend that made it (backend.backend_of_response): the
    emulator's counts are approximations and are kept apart from the API's."""

    tokens: int
    backend: str


class _Failed(Exception):
    """One attempt failed, and its row is recorded: whether to try again is decided next."""

    def __init__(self, exc: BaseException, failure: retrying.Failure, began: bool) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.failure = failure
        self.received: int | None = None  # characters of the answer, once it had begun
        self.began = began


class ApiCaller:
    def __init__(
        self,
        backend: Backend,
        model: ModelSpec,
        ledger: Ledger,
        corpus_key: str,
        cap: DailyCap,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        *,
        limits: RateLimits | None = None,
        count_limits: RateLimits | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        shared: tuple[Shared, str] | None = None,
    ) -> None:
        """`limits`: what is known of the rate limits before the first response (a tier's
        figures), else nothing; `count_limits`: the same of token counting's own bucket;
        `sleep` waits on `clock` (the emulator's virtual clock in tests). `shared`: where
        the instances on one state folder share the Messages buckets, and the backend's
        key there (one organisation's buckets: what another instance's headers say is
        left is left for this one too)."""
        self.backend = backend
        self.model = model
        self.ledger = ledger
        self.corpus_key = corpus_key
        self.cap = cap
        self.clock = clock
        self.jitter = jitter  # shortens a backoff by up to a quarter (retrying.next_wait)
        self._sleep = sleep
        # Every request that spends from the buckets waits here, in one queue.
        self.scheduler = Scheduler(
            clock, sleep,
            {
                "messages": limits or RateLimits.unknown(),
                "count_tokens": count_limits or RateLimits.unknown(),
            },
        )  # fmt: skip
        self._in_flight: dict[Pool, list[Demand]] = {"messages": [], "count_tokens": []}
        self._shared = shared
        # When each pool's buckets were last known (from this instance or another's).
        self._buckets_seen: dict[Pool, float] = {"messages": -math.inf, "count_tokens": -math.inf}
        self._answered_by: str | None = None  # as the last response said (backend_of_response)
        # Why attempts still under way are cancelled, once the server is stopping.
        self.stopping: str | None = None
        # Told what every response's headers say of the Messages API's buckets.
        self.on_limits: Callable[[RateLimits], None] | None = None

    @property
    def limits(self) -> RateLimits:
        """The Messages API's buckets, as known now."""
        return self.scheduler.buckets["messages"]

    @limits.setter
    def limits(self, known: RateLimits) -> None:
        self.scheduler.observed("messages", known)

    @property
    def count_limits(self) -> RateLimits:
        """Token counting's bucket, as known now."""
        return self.scheduler.buckets["count_tokens"]

    def waiting(self) -> list[WaitingNote]:
        """What waits for the buckets now (for the status tools)."""
        return self.scheduler.waiting()

    def question_wait(self, requests: list[PreparedRequest]) -> float | None:
        """Seconds before the last of a question's requests could be sent, were it asked
        now; None if one never can."""
        self._catch_up_limits()
        return self.scheduler.expected_wait("question", "messages", [r.demand() for r in requests])

    def too_long_to_wait(self, wait: float, patience: float) -> RateLimitWaitError:
        """The refusal of a question the buckets would hold `wait` seconds, longer than the
        client's `patience`: what holds it, and when to ask again."""
        ahead = sum(note.count for note in self.waiting() if note.pool == "messages")
        at = datetime.fromtimestamp(self.scheduler.now() + wait, UTC).strftime("%H:%M:%S UTC")
        queued = f"; {plural(ahead, 'request')} already waiting" if ahead else ""
        return RateLimitWaitError(
            f"not sent: the account's rate limits ({_figures(self.limits)}, "
            f"{self.limits.source}{queued}) let this question go in {about_seconds(wait)}, "
            f"longer than your client waits ({patience:g} s). Ask again in "
            f"{about_seconds(wait)} (after {at}); nothing was spent. Meanwhile search and "
            "read_document answer at once.",
            wait_seconds=wait,
        )

    def rate_limit_wait(self, headers: Mapping[str, str], request: PreparedRequest) -> float:
        """How long a request the API refused with a 429 waits before it is sent again:
        what the refusal's retry-after asks, or longer if the buckets, as its headers state
        them, need longer. For the attempt loop's retries of a 429."""
        return wait_after_refusal(self.limits, headers, request.demand(), self.scheduler.now())

    @property
    def label(self) -> str:
        """The backend answering, as its responses say: an emulator behind ANTHROPIC_BASE_URL
        is the emulator. Rows of requests that got no response are labelled with it too."""
        return self._answered_by or self.backend.kind

    async def answer(
        self,
        request: PreparedRequest,
        on_begun: Callable[[Usage], None],
        *,
        wanted: Callable[[], bool] = _always,
        group: int | None = None,
    ) -> Sent:
        """Send `request` streaming, and read its answer to the end. `on_begun(usage)` is
        called as soon as the response has begun (`message_start` carries the cache
        usage): the entries it writes are readable from then on. A stream that ends or
        breaks before `message_stop` is an error, never a partial answer. `wanted()`: whether
        anyone still waits for the answer; when not, a failed attempt is not tried again.
        `group`: the fan-out question it is part of (`scheduler.new_group()`), paced as one."""
        with self.cap.within(request.estimate_usd, _WHAT[request.kind]):
            return await self._attempts(
                request,
                lambda attempt: self._stream(request, on_begun, attempt, group),
                wanted,
                "",
            )

    async def warm(self, request: PreparedRequest) -> Sent:
        """Send a `max_tokens: 0` request (warming, keeping warm): the cache is written or
        read, nothing is generated."""
        return await self._whole(request, "warming the cache failed: ")

    async def learn_limits(self) -> Sent:
        """Send the one small request whose response's headers state the account's rate
        limits (prepared.limits_request), recorded in the ledger like any billed request;
        `limits` holds them from then on."""
        request = limits_request(self.model, self.clock())
        return await self._whole(request, "asking the API for the account's rate limits failed: ")

    async def _whole(self, request: PreparedRequest, prefix: str) -> Sent:
        """Send `request` not streamed, checked against the daily cap, tried again as the
        retry decision says; a refusal of the cap is recorded, as no one waits on it."""
        checked = False
        try:
            with self.cap.within(request.estimate_usd, _WHAT[request.kind]):
                checked = True
                return await self._attempts(
                    request, lambda attempt: self._create(request, attempt), _always, prefix
                )
        except BudgetExceededError as refused:
            if not checked:  # nothing was sent: a row says so, as no one waits on the answer
                self._record_refusal(request, refused)
            raise

    async def _attempts(
        self,
        request: PreparedRequest,
        once: Callable[[int], Awaitable[Sent]],
        wanted: Callable[[], bool],
        prefix: str,
    ) -> Sent:
        """Attempts of `once(attempt)` until one is answered, or the retry decision
        (retrying.next_wait) gives up, or no one wants the answer any more."""
        for attempt in itertools.count(1):
            try:
                return await once(attempt)
            except _Failed as failed:
                wait = retrying.next_wait(
                    failed.failure, attempt, max_retries=self.backend.retries,
                    jitter=self.jitter(), now=time.time(),
                )  # fmt: skip
                rate_limited = failed.failure.status == 429
                if wait is not None and rate_limited:
                    # Another program spends on the same key: wait what the buckets need
                    # too, on the caller's clock (the buckets refill on the API's).
                    wait = max(wait, self.rate_limit_wait(failed.failure.headers, request))
                if wait is not None and wanted():
                    log.info(
                        "%s request, shard %d: attempt %d failed (%s); trying again in %.2f s",
                        request.kind, request.shard, attempt, failed.exc, wait,
                    )  # fmt: skip
                    await (self._sleep if rate_limited else anyio.sleep)(wait)
                    if wanted():
                        continue
                error = describe_api_error(failed.exc, received=failed.received, attempts=attempt)
                raise ApiCallError(prefix + error) from failed.exc
        raise AssertionError("unreachable")  # itertools.count never ends

    async def _stream(
        self,
        request: PreparedRequest,
        on_begun: Callable[[Usage], None],
        attempt: int,
        group: int | None = None,
    ) -> Sent:
        """One streamed attempt. Until the response begins it may take RESPONSE_BEGIN_SECONDS
        (backend.py); once it has, a silence longer than the request timeout breaks it."""
        begun: Usage | None = None
        message_id: str | None = None
        received = 0  # characters of the answer's text that have arrived
        stopped = False
        started = time.perf_counter()
        admitted = _Admission()
        try:
            async with (
                self._admitted(request, admitted, group) as demand,
                self.backend.client.messages.stream(
                    **request.body(), timeout=self.backend.timeout()
                ) as stream,
            ):
                self._observe(stream.response.headers, demand)
                events = stream.__aiter__()
                while True:
                    try:
                        if begun is None:
                            event = await events.__anext__()
                        else:
                            with anyio.fail_after(self.backend.request_timeout):
                                event = await events.__anext__()
                    except StopAsyncIteration:
                        break
                    if event.type == "message_start":
                        begun = Usage.from_api(event.message.usage)
                        message_id = event.message.id
                        on_begun(begun)
                    elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                        received += len(event.delta.text)
                    elif event.type == "message_stop":
                        stopped = True
                if not stopped:  # the SDK would hand back what arrived as if it were whole
                    raise IncompleteResponseError("the stream ended before message_stop")
                message = await stream.get_final_message()
                headers = stream.response.headers
        except _FAILURES as exc:
            self._observe_failure(exc)
            failed = self._failed(request, started, attempt, exc, begun, message_id, received)
            raise failed from exc
        except anyio.get_cancelled_exc_class():
            if admitted.past:  # cancelled while waiting for the limits: nothing was sent
                self._record_cancelled(request, started, attempt, begun, message_id)
            raise
        return self._record(request, message, headers, started, attempt)

    async def _create(self, request: PreparedRequest, attempt: int) -> Sent:
        """One attempt of a request sent whole (`max_tokens: 0`): its response begins when
        its body arrives, all at once."""
        started = time.perf_counter()
        admitted = _Admission()
        try:
            async with self._admitted(request, admitted) as demand:
                raw = await self.backend.client.messages.with_raw_response.create(
                    **request.body(), timeout=self.backend.timeout()
                )
                self._observe(raw.headers, demand)
            message = await raw.parse()
        except _FAILURES as exc:
            self._observe_failure(exc)
            raise self._failed(request, started, attempt, exc, None, None, 0) from exc
        except anyio.get_cancelled_exc_class():
            if admitted.past:
                self._record_cancelled(request, started, attempt, None, None)
            raise
        return self._record(request, message, raw.headers, started, attempt)

    def _failed(
        self,
        request: PreparedRequest,
        started: float,
        attempt: int,
        exc: BaseException,
        begun: Usage | None,
        message_id: str | None,
        received: int,
    ) -> _Failed:
        """The row of a failed attempt, recorded, and what failed, for the retry decision."""
        failure = failure_of(exc, began=begun is not None, writes_cache=bool(request.writes))
        error = describe_api_error(exc, received=received if begun is not None else None)
        self._record_failure(request, started, attempt, error, failure, begun, message_id, received)
        failed = _Failed(exc, failure, begun is not None)
        failed.received = received if begun is not None else None
        return failed

    async def count_tokens(
        self, content: list[dict[str, Any]], system: str | None = None
    ) -> Counted:
        """Input tokens of one user message holding `content` (and `system`), for the
        model, and which backend counted them; free, so neither guarded nor recorded, and
        retried by the SDK (Backend.counting)."""
        message = cast(MessageParam, {"role": "user", "content": content})
        extra: dict[str, Any] = {"system": [{"type": "text", "text": system}]} if system else {}
        one = Demand(requests=1)
        self._catch_up_limits("count_tokens")  # one organisation's counting bucket too
        try:
            await self.scheduler.admit("count", "count_tokens", one)
        except NeverFits as exc:  # a bucket of no requests at all: a limits file's mistake
            raise ApiCallError("cannot count tokens: the token-counting limit is zero") from exc
        self._share_limits("count_tokens")
        self._in_flight["count_tokens"].append(one)
        try:
            raw = await self.backend.counting.messages.with_raw_response.count_tokens(
                model=self.model.id, messages=[message], **extra
            )
            self._observe(raw.headers, one, "count_tokens")
            result = await raw.parse()
        except anthropic.APIError as exc:
            self._observe_failure(exc, "count_tokens")
            raise ApiCallError(f"cannot count tokens: {describe_api_error(exc)}") from exc
        finally:
            self._in_flight["count_tokens"].remove(one)
        self._answered_by = backend_of_response(raw.headers, self.backend.kind)
        return Counted(result.input_tokens, self._answered_by)

    @asynccontextmanager
    async def _admitted(
        self, request: PreparedRequest, admission: _Admission, group: int | None = None
    ) -> AsyncIterator[Demand]:
        """Wait in the queue until the buckets hold what `request` takes (questions before
        background work), then take it and keep it in flight while the block runs
        (`admission.past` from then on). A request no bucket can ever hold is refused,
        unsent."""
        demand = request.demand()
        priority: Priority = "question" if request.kind == "ask" else "background"
        self._catch_up_limits()
        try:
            waited = await self.scheduler.admit(priority, "messages", demand, group)
        except NeverFits:
            raise BeyondRateLimitError(_beyond_limits(self.limits, demand)) from None
        self._share_limits()  # what this request took, for the others to see
        if waited >= _WAIT_WORTH_SAYING:
            log.info(
                "shard %d: waited %.1f s for the rate limits (%s)",
                request.shard, waited, self.limits.source,
            )  # fmt: skip
        self._in_flight["messages"].append(demand)
        admission.past = True
        try:
            yield demand
        finally:
            self._in_flight["messages"].remove(demand)

    def _observe(
        self, headers: Mapping[str, str], demand: Demand | None = None, pool: Pool = "messages"
    ) -> None:
        """What a response's headers say of the buckets; `demand`: its own request, which
        they have counted already, unlike the others still in flight."""
        others = list(self._in_flight[pool])
        if demand is not None and demand in others:
            others.remove(demand)
        pending = Demand(
            requests=sum(d.requests for d in others),
            input_tokens=sum(d.input_tokens for d in others),
            output_tokens=sum(d.output_tokens for d in others),
        )
        known = self.scheduler.buckets[pool]
        seen = known.observed(headers, self.scheduler.now(), in_flight=pending)
        if seen is not known:
            self.scheduler.observed(pool, seen)
            self._share_limits(pool)
            if pool == "messages" and self.on_limits is not None:
                self.on_limits(seen)

    def _share_limits(self, pool: Pool = "messages") -> None:
        """Tell the other instances on the state folder `pool`'s buckets as known now."""
        limits = self.scheduler.buckets[pool]
        if self._shared is None or not limits.buckets:
            return
        shared, backend = self._shared
        self._buckets_seen[pool] = now = self.scheduler.now()
        shared.publish_limits(backend, self.model.id, pool, limits.to_json(), now)

    def _catch_up_limits(self, pool: Pool = "messages") -> None:
        """Take `pool`'s buckets another instance knew later than this one, if any."""
        if self._shared is None:
            return
        shared, backend = self._shared
        found = shared.limits_since(backend, self.model.id, pool, self._buckets_seen[pool])
        if found is None:
            return
        text, seen = found
        theirs = RateLimits.from_json(text)
        if theirs is not None:
            self._buckets_seen[pool] = seen
            self.scheduler.observed(pool, theirs)

    def _observe_failure(self, exc: BaseException, pool: Pool = "messages") -> None:
        # A 429 carries the buckets' state as well: the next wait starts from it.
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            self._observe(headers, pool=pool)

    def _record(
        self,
        request: PreparedRequest,
        message: Message,
        headers: object,
        started: float,
        attempt: int,
    ) -> Sent:
        latency = (time.perf_counter() - started) * 1000
        backend = self._answered_by = backend_of_response(headers, self.backend.kind)
        usage = Usage.from_api(message.usage)
        cost, uncached = cost_usd(usage, self.model), uncached_cost_usd(usage, self.model)
        miss_reason, missed_tokens = cache_miss(message)
        recorded = self.ledger.record(
            RequestRecord(
                at=self.clock(), kind=request.kind, corpus=self.corpus_key,
                model=self.model.id, backend=backend, outcome="ok", usage=usage,
                cost_usd=cost, uncached_cost_usd=uncached, snapshot=request.snapshot,
                message_id=message.id, latency_ms=latency, shard=request.shard,
                ttl=request.end_ttl, cache_miss_reason=miss_reason,
                cache_missed_tokens=missed_tokens,
                emulator_pid=self.backend.emulator_pid if backend == OFFLINE_EMULATOR else None,
                attempt=attempt,
            )
        )  # fmt: skip
        return Sent(message, usage, cost, uncached, latency, backend, recorded.unrecorded, attempt)

    def _record_refusal(self, request: PreparedRequest, refused: BudgetExceededError) -> None:
        """A request the daily cap refused: not sent, so it cost nothing."""
        log.warning("shard %d: %s", request.shard, refused)
        self.ledger.record(
            RequestRecord(
                at=self.clock(), kind=request.kind, corpus=self.corpus_key,
                model=self.model.id, backend=self.label, outcome="refused",
                snapshot=request.snapshot, shard=request.shard, billing=UNBILLED,
                error=f"refused by the daily cap: up to ${refused.estimate_usd:.4f} with "
                f"${refused.spent_usd:.4f} spent of ${refused.cap_usd:.2f}",
            )
        )  # fmt: skip

    def _record_cancelled(
        self,
        request: PreparedRequest,
        started: float,
        attempt: int,
        begun: Usage | None,
        message_id: str | None,
    ) -> None:
        """The row of an attempt cancelled while under way: billed as its start reported if
        its response had begun, else perhaps billed."""
        seconds = time.perf_counter() - started
        error = cancelled_text(seconds, self.stopping or CANCELLED)
        self._record_failure(request, started, attempt, error, None, begun, message_id, 0)

    def _record_failure(
        self,
        request: PreparedRequest,
        started: float,
        attempt: int,
        error: str,
        failure: retrying.Failure | None,
        begun: Usage | None,
        message_id: str | None,
        received: int,
    ) -> None:
        """An error row for an attempt that failed (`failure`) or was cancelled (None),
        charging what the API surely bills: the usage its response's start reported
        (`begun`), if it had begun, else nothing; and, when the API may have run it with no
        usage known, what it would cost kept apart as an estimate (outcomes.billing_of)."""
        seconds = time.perf_counter() - started
        usage = begun or Usage()
        billing = billing_of(failure, begun)
        estimate = request.expected_usd(self.model) if billing == MAYBE else None
        text = failure_text(
            error, billing, begun=begun, estimate_usd=estimate or 0.0, received=received
        )
        self.ledger.record(
            RequestRecord(
                at=self.clock(), kind=request.kind, corpus=self.corpus_key,
                model=self.model.id, backend=self.label, outcome="error", usage=usage,
                cost_usd=cost_usd(usage, self.model),
                uncached_cost_usd=uncached_cost_usd(usage, self.model),
                snapshot=request.snapshot, message_id=message_id, latency_ms=seconds * 1000,
                error=text, shard=request.shard, billing=billing, estimate_usd=estimate,
                attempt=attempt,
            )
        )  # fmt: skip


def _figures(limits: RateLimits) -> str:
    shown = [f"{b.per_minute:,} {k.replace('_', ' ')}" for k, b in limits.buckets.items()]
    return (", ".join(shown) + " a minute") if shown else "figures not known yet"


def _beyond_limits(limits: RateLimits, demand: Demand) -> str:
    parts = [
        f"{wanted:,} {kind.replace('_', ' ')} where the account allows {allowed:,} a minute"
        for kind, wanted, allowed in limits.too_large(demand)
    ]
    return (
        f"not sent: this request needs {'; '.join(parts)} ({limits.source}), so it can never "
        "pass. A smaller --budget-tokens splits the corpus into shards that fit; a higher "
        "usage tier raises the limit."
    )
