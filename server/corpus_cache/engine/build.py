"""Staged cache builds: a shard's prefix written a slice per request, within the rate limits.

When the write a question would make (from the furthest live entry to the end of the
shard) is more than one request may carry under the account's input-tokens-per-minute
limit, the shard is built first (plan/staging.py): one `max_tokens: 0` request per slice,
each marking the end of the slice before it (a read: cache reads do not count toward the
limit, and it keeps that entry alive), the layout's anchors inside the slice and the
slice's end (the writes), and one earlier anchor of the layout that it refreshes, so that
none lapses during a long build. Every breakpoint sits on the entry it reads, so the
API's 20-block lookback never has to find one. The API caller waits before each request
as long as the input bucket needs (api/caller.py); a build therefore takes about a
minute per slice at the lowest tier, and writes nothing twice.

A build resumes from what is alive: each step stages the shard again from the entries
believed alive (kept across a restart, engine/remembered.py), so after a failure, a
restart or an edit it goes on from the furthest live slice end. It follows the live
corpus: after an edit the next slice is the new snapshot's.

Builds run in the builder's task group (`Builder.running`, entered by `serve`), so that
one a question started goes on after the question has been told to come back later.
Without one (a command that asks once), a build runs inside the question.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from corpus_cache.api.caller import ApiCaller, Sent
from corpus_cache.api.prepared import PreparedRequest, RequestKind
from corpus_cache.api.ratelimits import Demand, RateLimits
from corpus_cache.cache import live_corpus
from corpus_cache.cache.entries import CacheEntries
from corpus_cache.cache.live_corpus import Corpus
from corpus_cache.cache.prepare import Marking
from corpus_cache.engine.answers import Warmed
from corpus_cache.errors import (
    ApiCallError,
    BeyondRateLimitError,
    BudgetExceededError,
    CacheBuildingError,
    CorpusCacheError,
)
from corpus_cache.models.catalog import ModelSpec
from corpus_cache.models.limits import load_limits
from corpus_cache.models.pricing import Usage
from corpus_cache.plan.layout import Shard
from corpus_cache.plan.staging import (
    Staging,
    Unbuildable,
    about,
    build_seconds,
    slice_capacity,
    stage,
)
from corpus_cache.wording import plural

log = logging.getLogger(__name__)

ATTEMPTS = 3  # failed requests in a row before a build stops (a question starts it again)
RETRY_SECONDS = 5.0  # the first wait after a failed request; doubled each time


class Host(Protocol):
    """What a build needs of the engine (engine/core.py), without importing it."""

    @property
    def current(self) -> Corpus: ...

    caller: ApiCaller
    entries: CacheEntries
    model: ModelSpec
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]

    def prepare_warming(
        self, kind: RequestKind, corpus: Corpus, shard: Shard, marking: Marking = ...
    ) -> PreparedRequest: ...

    async def claim_to_write(self, identities: Collection[str]) -> bool: ...

    def release_claims(self, identities: Collection[str]) -> None: ...


@dataclass(frozen=True)
class BuildProgress:
    """How far one shard's build is, and when it should be done."""

    shard: int
    done: int  # slices written (or found alive)
    total: int
    remaining_tokens: int
    eta_seconds: float
    cost_usd: float = 0.0  # what this run of the build has spent
    failed: str | None = None  # why it stopped, if it did

    def describe(self) -> str:
        if self.failed is not None:
            return (
                f"building the cache stopped after {self.done} of "
                f"{plural(self.total, 'slice')}: {self.failed}"
            )
        return (
            f"building the cache: {self.done} of {plural(self.total, 'slice')}, "
            f"done in {about(self.eta_seconds)}"
        )


@dataclass
class _Build:
    shard: int
    progress: BuildProgress
    finished: anyio.Event = field(default_factory=anyio.Event)
    failure: CorpusCacheError | None = None
    sent: list[Sent] = field(default_factory=list)

    def warmed(self) -> Warmed:
        """The requests of this build as one warming of its shard."""
        usage = Usage(
            *(sum(getattr(s.usage, f) for s in self.sent) for f in (
                "input_tokens", "cache_read_tokens", "cache_write_5m_tokens",
                "cache_write_1h_tokens", "output_tokens",
            ))
        )  # fmt: skip
        return Warmed(
            self.shard, usage, sum(s.cost_usd for s in self.sent),
            sum(s.uncached_cost_usd for s in self.sent), sum(s.latency_ms for s in self.sent),
            next((s.ledger_note for s in self.sent if s.ledger_note), None),
        )  # fmt: skip


class Builder:
    def __init__(self, host: Host) -> None:
        self._host = host
        self._group: TaskGroup | None = None
        self._builds: dict[int, _Build] = {}  # by shard number: running, or stopped by a failure
        self._prefill: float | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run builds in the background while the block runs; they stop with it."""
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield
            finally:
                self._group = None
                group.cancel_scope.cancel()

    # --- what is known ----------------------------------------------------------------

    @property
    def capacity(self) -> int | None:
        """Tokens one slice may write under the known input limit; None: no limit known."""
        itpm = self._host.caller.limits.input_tokens_per_minute
        return slice_capacity(itpm) if itpm is not None else None

    def building(self, number: int) -> bool:
        build = self._builds.get(number)
        return build is not None and not build.finished.is_set()

    def progress(self) -> list[BuildProgress]:
        """The builds running, or stopped by a failure, by shard."""
        return [self._builds[n].progress for n in sorted(self._builds)]

    def describe(self) -> str | None:
        """The running builds in a sentence ("building the cache: 3 of 5 slices, done in
        about 2 min"), or None if none runs."""
        running = [b.progress for b in self._builds.values() if not b.finished.is_set()]
        if not running:
            return None
        if len(running) == 1:
            return running[0].describe()
        return "; ".join(f"shard {p.shard}: {p.describe()}" for p in running)

    def needed(self, corpus: Corpus, shard: Shard) -> bool:
        """Whether a question on `shard` must wait for a build: one is running, or what
        the question would write is more than one request may carry."""
        if self.building(shard.number):
            return True
        capacity = self.capacity
        plan = shard.plan
        if capacity is None or not plan.cached:
            return False
        ids, now = corpus.anchor_ids.get(shard.number, {}), self._host.clock()
        live = self._host.entries.live(ids, plan.anchors, now)
        read = plan.tokens_through(max(live)) if live else 0
        return plan.total_tokens - read > capacity

    def staging(self, corpus: Corpus, shard: Shard) -> Staging | Unbuildable | None:
        """`shard`'s build from what is alive now; None when no limit is known."""
        capacity = self.capacity
        if capacity is None:
            return None
        plan = shard.plan
        fresh = stage(plan, capacity)
        if isinstance(fresh, Unbuildable):
            return fresh
        # Any slice end or anchor whose entry lives, as this run or an earlier one wrote it.
        candidates = live_corpus.with_plan(corpus, shard.number, fresh.plan, self._host.model.id)
        ids = candidates.anchor_ids.get(shard.number, {})
        alive = self._host.entries.live(ids, fresh.plan.anchors, self._host.clock())
        return stage(plan, capacity, live=list(alive)) if alive else fresh

    def estimate(self, shard: int, staging: Staging, cost_usd: float = 0.0) -> BuildProgress:
        limits = self._host.caller.limits
        itpm = limits.input_tokens_per_minute or 1
        todo = [s.tokens for s in staging.todo]
        available = float(itpm)
        if todo:
            wait = limits.wait_seconds(Demand(input_tokens=todo[0]), self._host.clock()) or 0.0
            available = todo[0] - wait * itpm / 60.0 if wait > 0 else float(itpm)
        seconds = build_seconds(
            todo, input_tokens_per_minute=itpm, available=available, prefill=self._prefill_speed()
        )
        return BuildProgress(
            shard, staging.done, len(staging.ends), staging.remaining_tokens, seconds, cost_usd
        )

    def _prefill_speed(self) -> float:
        if self._prefill is None:
            self._prefill = load_limits().latency.prefill_tokens_per_second
        return self._prefill

    # --- building -----------------------------------------------------------------------

    def start(self, corpus: Corpus, shard: Shard) -> BuildProgress | None:
        """Start building `shard` in the background, unless it is building already; its
        progress, or None if there is nothing to build or no task group to build in.
        Raises BeyondRateLimitError if it can never be built under the limit."""
        running = self._builds.get(shard.number)
        if running is not None and not running.finished.is_set():
            return running.progress
        staged = self.staging(corpus, shard)
        if isinstance(staged, Unbuildable):
            raise _unbuildable(shard, staged, self._host.caller.limits)
        if staged is None or not staged.todo or self._group is None:
            return None
        build = _Build(shard.number, self.estimate(shard.number, staged))
        self._builds[shard.number] = build
        self._group.start_soon(self._run, build)
        return build.progress

    async def build(self, corpus: Corpus, shard: Shard) -> Warmed | None:
        """Build `shard` now, or wait for the build already running; raises what stopped
        it. What it sent, as one warming; None if there was nothing to build."""
        build = self._builds.get(shard.number)
        if build is None or build.finished.is_set():
            staged = self.staging(corpus, shard)
            if isinstance(staged, Unbuildable):
                raise _unbuildable(shard, staged, self._host.caller.limits)
            if staged is None or not staged.todo:
                return None
            build = _Build(shard.number, self.estimate(shard.number, staged))
            self._builds[shard.number] = build
            await self._run(build)
        await build.finished.wait()
        if build.failure is not None:
            raise build.failure
        return build.warmed()

    async def wait(self, number: int) -> BuildProgress | None:
        """Wait for shard `number`'s running build to end; its progress then, if any."""
        build = self._builds.get(number)
        if build is None:
            return None
        await build.finished.wait()
        return build.progress

    async def ready(self, corpus: Corpus, shards: Sequence[Shard], *, within: float) -> None:
        """Return once every one of `shards` can be asked within the rate limits: at once
        if none needs a build; after its build if that is done within `within` seconds.
        Otherwise raise CacheBuildingError, saying how far the build is and when to ask
        again, and let it go on. Without a task group to build in, build here."""
        needing = [s for s in shards if self.needed(corpus, s)]
        if not needing:
            return
        if self._group is None:
            for shard in needing:
                await self.build(corpus, shard)
            return
        started = [p for s in needing if (p := self.start(corpus, s)) is not None]
        for shard in needing:
            build = self._builds.get(shard.number)
            if build is not None and build.failure is not None and build.finished.is_set():
                raise build.failure
        if not started:
            return
        eta = max(p.eta_seconds for p in started)
        if eta > within:
            raise self._come_back(started)
        with anyio.move_on_after(within):
            for shard in needing:
                build = self._builds.get(shard.number)
                if build is not None:
                    await build.finished.wait()
        for shard in needing:
            build = self._builds.get(shard.number)
            if build is None:
                continue
            if not build.finished.is_set():
                raise self._come_back([build.progress])
            if build.failure is not None:
                raise build.failure

    def _come_back(self, progress: Sequence[BuildProgress]) -> CacheBuildingError:
        eta = max(p.eta_seconds for p in progress)
        several = len(progress) > 1
        said = "; ".join((f"shard {p.shard}: " if several else "") + p.describe() for p in progress)
        return CacheBuildingError(
            f"{said[0].upper()}{said[1:]}. The corpus is written to the prompt cache a slice "
            "at a time, as the account's input-token rate limit allows; the question was not "
            f"sent. Ask again in {about(eta)}: it will then be answered "
            "from the whole cached corpus.",
            retry_after=eta,
        )

    async def _run(self, build: _Build) -> None:
        failures = 0
        try:
            while True:
                corpus = self._host.current
                shard = next((s for s in corpus.shards if s.number == build.shard), None)
                if shard is None or not shard.plan.cached:
                    return
                staged = self.staging(corpus, shard)
                if isinstance(staged, Unbuildable):
                    raise _unbuildable(shard, staged, self._host.caller.limits)
                if staged is None or not staged.todo:
                    build.progress = _finished(build.progress, staged)
                    return
                build.progress = self.estimate(build.shard, staged, build.progress.cost_usd)
                request = self._request(corpus, shard, staged)
                # Another instance on the state folder (a second window, asked too) may be
                # writing this slice: one writes it, the other then goes on from there.
                if not await self._host.claim_to_write(request.writes):
                    continue
                try:
                    sent = await self._host.caller.warm(request)
                    self._host.entries.answered(request, sent.usage)
                except (BeyondRateLimitError, BudgetExceededError):
                    raise
                except ApiCallError as exc:
                    failures += 1
                    self._host.release_claims(request.writes)
                    # What it read may be gone: believe only what the next response says.
                    self._host.entries.forget(
                        [request.identities[a] for a in request.alive], self._host.clock()
                    )
                    if failures >= ATTEMPTS:
                        raise
                    log.warning("shard %d: a build request failed, trying again: %s",
                                build.shard, exc)  # fmt: skip
                    await self._host.sleep(RETRY_SECONDS * 2 ** (failures - 1))
                    continue
                finally:
                    self._host.release_claims(request.writes)  # its entries published first
                failures = 0
                build.sent.append(sent)
                build.progress = BuildProgress(
                    build.shard, build.progress.done + 1, build.progress.total,
                    build.progress.remaining_tokens, build.progress.eta_seconds,
                    build.progress.cost_usd + sent.cost_usd,
                )  # fmt: skip
                log.info("shard %d: %s", build.shard, build.progress.describe())
        except CorpusCacheError as exc:
            build.failure = exc
            build.progress = BuildProgress(
                build.shard, build.progress.done, build.progress.total,
                build.progress.remaining_tokens, build.progress.eta_seconds,
                build.progress.cost_usd, failed=str(exc),
            )  # fmt: skip
            log.warning("shard %d: %s", build.shard, build.progress.describe())
        finally:
            build.finished.set()
            if build.failure is None and self._builds.get(build.shard) is build:
                del self._builds[build.shard]

    def _request(self, corpus: Corpus, shard: Shard, staged: Staging) -> PreparedRequest:
        """The request writing `staged`'s next slice: it marks the entry it reads through,
        the layout's anchors inside the slice and the slice's end, and refreshes the
        earlier anchor of the layout that would lapse first."""
        piece = staged.todo[0]
        building = live_corpus.with_plan(corpus, shard.number, staged.plan, self._host.model.id)
        built = building.shard(shard.number)
        ids, now = building.anchor_ids.get(shard.number, {}), self._host.clock()
        read = max((a for a in staged.ends if a < piece.end), default=None)
        marks = {*piece.anchors, piece.end}
        if read is not None:
            marks.add(read)
            live = self._host.entries.live(ids, shard.plan.anchors, now)
            older = sorted(
                (a for a in live if a < read), key=lambda a: self._host.entries.expires(ids[a])
            )
            marks.update(older[:1])
        marking = Marking(marked=sorted(marks), through=piece.end)
        return self._host.prepare_warming("warm", building, built, marking)


def _finished(progress: BuildProgress, staged: Staging | None) -> BuildProgress:
    total = len(staged.ends) if staged is not None else progress.total
    return BuildProgress(progress.shard, total, total, 0, 0.0, progress.cost_usd)


def _unbuildable(shard: Shard, why: Unbuildable, limits: RateLimits) -> BeyondRateLimitError:
    if why.position >= 0:
        what = f"the document {shard.plan.order[why.position]} is {why.tokens:,} input tokens"
    else:
        what = f"the shortest prefix the API will cache is {why.tokens:,} input tokens"
    itpm = limits.input_tokens_per_minute or 0
    return BeyondRateLimitError(
        f"not sent: {what} where the account allows {itpm:,} a minute ({limits.source}); "
        f"one request may write at most {why.capacity:,} of them to the cache, so it can "
        "never pass. Leave it out of the folder (.gitignore), or use a higher "
        "usage tier (--tier)."
    )
