"""The admission policy (api/scheduling.py) as pure logic: which waiting request goes next,
given the buckets and the queue; and its edge (api/scheduler.py) on a virtual clock."""

from __future__ import annotations

import itertools

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.api.ratelimits import KINDS, Bucket, Demand, RateLimits
from corpus_cache.api.scheduler import Scheduler
from corpus_cache.api.scheduling import (
    AGING_SECONDS,
    Pool,
    Waiting,
    admissions,
    ordered,
    schedule,
    touches,
)

NOW = 1_000.0


def buckets(rpm: int, itpm: int, otpm: int, fill: float = 1.0) -> dict[Pool, RateLimits]:
    figures = {"requests": rpm, "input_tokens": itpm, "output_tokens": otpm}
    messages = RateLimits({k: Bucket(v, v * fill, NOW) for k, v in figures.items()}, "test")  # type: ignore[misc]
    counting = RateLimits({"requests": Bucket(100, 100 * fill, NOW)}, "test")
    return {"messages": messages, "count_tokens": counting}


@st.composite
def queues(draw: st.DrawFn) -> list[Waiting]:
    size = draw(st.integers(0, 12))
    waiting = []
    for ticket in range(size):
        priority = draw(st.sampled_from(["question", "background", "count"]))
        pool: Pool = "count_tokens" if priority == "count" else "messages"
        demand = (
            Demand(requests=1)
            if pool == "count_tokens"
            else Demand(
                requests=1,
                input_tokens=draw(st.integers(0, 40_000)),
                output_tokens=0 if priority == "background" else draw(st.integers(0, 4_000)),
            )
        )
        arrived = NOW - draw(st.floats(0, 300))
        group = draw(st.sampled_from([None, None, 1, 2])) if priority == "question" else None
        waiting.append(Waiting(ticket, priority, pool, demand, arrived, group))  # type: ignore[arg-type]
    return waiting


fills = st.floats(0, 1)


@given(queues(), fills)
def test_what_is_admitted_together_fits_the_buckets(queue: list[Waiting], fill: float) -> None:
    state = buckets(50, 30_000, 8_000, fill)
    decided = admissions(queue, state, NOW)
    by_ticket = {w.ticket: w for w in queue}
    for pool in ("messages", "count_tokens"):
        taken = [by_ticket[t].demand for t in decided.admit if by_ticket[t].pool == pool]
        for kind in KINDS:
            bucket = state[pool].buckets.get(kind)  # type: ignore[index]
            if bucket is not None:
                assert sum(d.of(kind) for d in taken) <= bucket.available(NOW) + 1e-6


@given(queues(), fills)
def test_nothing_overtakes_a_waiting_request_on_a_bucket_it_needs(
    queue: list[Waiting], fill: float
) -> None:
    state = buckets(50, 30_000, 8_000, fill)
    decided = admissions(queue, state, NOW)
    order = [w.ticket for w in ordered(queue, NOW)]
    left = [w for w in queue if w.ticket not in decided.admit and w.ticket not in decided.refused]
    for admitted in decided.admit:
        w = next(x for x in queue if x.ticket == admitted)
        for other in left:
            if order.index(other.ticket) < order.index(admitted):
                assert not (touches(w, state) & touches(other, state))


@given(queues())
def test_questions_are_served_before_background_work_unless_it_has_waited_long(
    queue: list[Waiting],
) -> None:
    served = ordered(queue, NOW)
    for before, after in itertools.pairwise(served):
        aged = NOW - before.arrived >= AGING_SECONDS
        if before.priority == "background" and not aged:
            assert after.priority != "question"


@given(queues(), fills)
@settings(max_examples=60)
def test_every_request_that_fits_a_bucket_is_sent_in_the_end(
    queue: list[Waiting], fill: float
) -> None:
    state = buckets(50, 30_000, 8_000, fill)
    starts = schedule(queue, state, NOW)
    for w in queue:
        limits = state[w.pool]
        fits = limits.wait_seconds(w.demand, NOW + 10_000) is not None
        assert (starts[w.ticket] is not None) == fits
        if fits:
            assert starts[w.ticket] >= NOW  # type: ignore[operator]


@given(queues(), fills)
@settings(max_examples=60)
def test_a_fan_out_questions_requests_go_in_order_with_nothing_between_them(
    queue: list[Waiting], fill: float
) -> None:
    starts = schedule(queue, buckets(50, 30_000, 8_000, fill), NOW)
    members = sorted((w for w in queue if w.group == 1), key=lambda w: w.ticket)
    times = [starts[w.ticket] for w in members if starts[w.ticket] is not None]
    assert times == sorted(times)  # type: ignore[type-var]


def test_a_question_goes_before_a_warm_request_that_arrived_first() -> None:
    state = buckets(50, 60_000, 8_000, fill=0.0)  # empty: 1,000 input tokens a second
    warm = Waiting(0, "background", "messages", Demand(1, 50_000, 0), NOW)
    question = Waiting(1, "question", "messages", Demand(1, 5_000, 0), NOW + 1)
    starts = schedule([warm, question], state, NOW + 1)
    assert starts[1] == pytest.approx(NOW + 5)
    assert starts[0] == pytest.approx(NOW + 55)


def test_background_work_that_has_waited_two_minutes_is_no_longer_overtaken() -> None:
    state = buckets(50, 60_000, 8_000, fill=0.0)
    warm = Waiting(0, "background", "messages", Demand(1, 50_000, 0), NOW - AGING_SECONDS)
    question = Waiting(1, "question", "messages", Demand(1, 5_000, 0), NOW)
    starts = schedule([warm, question], state, NOW)
    assert starts[0] < starts[1]  # type: ignore[operator]


def test_counting_never_waits_behind_a_question_it_shares_no_bucket_with() -> None:
    state = buckets(50, 60_000, 8_000, fill=0.0)
    question = Waiting(0, "question", "messages", Demand(1, 50_000, 0), NOW)
    count = Waiting(1, "count", "count_tokens", Demand(1), NOW)
    decided = admissions(
        [question, count], {**state, "count_tokens": buckets(1, 1, 1)["count_tokens"]}, NOW
    )
    assert decided.admit == (1,)


def test_a_request_larger_than_a_bucket_is_refused_not_kept_waiting() -> None:
    decided = admissions(
        [Waiting(0, "question", "messages", Demand(1, 90_000, 0), NOW)],
        buckets(50, 30_000, 8_000),
        NOW,
    )
    assert decided.refused == (0,)
    assert decided.wake_at is None


# --- the edge: one queue, on a virtual clock --------------------------------------------


class VirtualTime:
    """A clock that moves only when the test says, and a sleep that waits for it."""

    def __init__(self, start: float) -> None:
        self.now = start
        self._moved = anyio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        until = self.now + seconds
        while self.now < until:
            moved = self._moved
            await moved.wait()

    async def advance_to(self, moment: float) -> None:
        self.now = moment
        self._moved.set()
        self._moved = anyio.Event()
        await anyio.wait_all_tasks_blocked()


@pytest.mark.anyio
async def test_a_question_arriving_behind_a_waiting_warm_request_is_sent_first() -> None:
    time = VirtualTime(NOW)
    scheduler = Scheduler(time.clock, time.sleep, buckets(50, 60_000, 8_000, fill=0.0))
    sent: dict[str, float] = {}

    async def send(name: str, priority: str, tokens: int) -> None:
        await scheduler.admit(priority, "messages", Demand(1, tokens, 0))  # type: ignore[arg-type]
        sent[name] = time.now

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(send, "warm", "background", 50_000)
            await anyio.wait_all_tasks_blocked()
            await time.advance_to(NOW + 1)
            group.start_soon(send, "question", "question", 5_000)
            await anyio.wait_all_tasks_blocked()
            notes = scheduler.waiting()
            assert sum(n.count for n in notes) == 2
            for moment in (NOW + 5.001, NOW + 40, NOW + 55.001):
                await time.advance_to(moment)
    assert sent["question"] == pytest.approx(NOW + 5, abs=0.01)
    assert sent["warm"] == pytest.approx(NOW + 55, abs=0.01)


@pytest.mark.anyio
async def test_a_request_cancelled_while_waiting_leaves_the_queue() -> None:
    time = VirtualTime(NOW)
    scheduler = Scheduler(time.clock, time.sleep, buckets(50, 60_000, 8_000, fill=0.0))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(scheduler.admit, "background", "messages", Demand(1, 50_000, 0))
            await anyio.wait_all_tasks_blocked()
            assert scheduler.waiting()
            group.cancel_scope.cancel()
    assert scheduler.waiting() == []
