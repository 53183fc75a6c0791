"""Long tool calls: progress notifications while they run, and a deadline that ends them
before the client gives up on its own (Claude Desktop cancels a call after about 60 s and
then shows only a generic timeout)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import anyio

from corpus_cache.errors import DeadlineExceededError

T = TypeVar("T")


class ProgressReporter(Protocol):
    async def __call__(self, progress: float, total: float | None, message: str | None) -> None: ...


async def with_heartbeat(
    work: Callable[[], Awaitable[T]],
    report: ProgressReporter,
    *,
    interval: float,
    deadline: float,
    waiting_for: str | Callable[[], str],
    on_deadline: str | Callable[[], str],
) -> T:
    """Await `work()`, reporting progress every `interval` seconds, each saying what is
    awaited (`waiting_for`, or what it returns then); give up after `deadline` seconds with
    a `DeadlineExceededError` whose message ends with `on_deadline` (or what it returns,
    asked then).

    Progress is the elapsed time in seconds out of the deadline, so it only ever grows, as
    the protocol requires, and a client that shows a bar shows the time left."""
    started = anyio.current_time()
    done: list[T] = []
    failed: list[Exception] = []

    async def beat() -> None:
        while True:
            await anyio.sleep(interval)
            elapsed = round(anyio.current_time() - started, 1)
            what = waiting_for if isinstance(waiting_for, str) else waiting_for()
            await report(elapsed, deadline, f"{what}: {elapsed:.0f} s of at most {deadline:.0f} s")

    with anyio.move_on_after(deadline):
        async with anyio.create_task_group() as group:
            group.start_soon(beat)
            try:
                done.append(await work())
            except Exception as exc:  # raised again below, so the task group does not wrap it
                failed.append(exc)
            group.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if not done:
        advice = on_deadline if isinstance(on_deadline, str) else on_deadline()
        raise DeadlineExceededError(f"no answer within {deadline:g} s; {advice}")
    return done[0]
