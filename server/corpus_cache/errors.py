"""Errors a user can act on. Each message says what happened and what to do."""

from __future__ import annotations


class CorpusCacheError(Exception):
    """Base of every error the tools report back to the user or model."""


class InvalidArgumentError(CorpusCacheError):
    pass


class NotInCorpusError(CorpusCacheError):
    pass


class CorpusTooLargeError(CorpusCacheError):
    pass


class ApiCallError(CorpusCacheError):
    """The Messages API call failed after the SDK's retries."""


class BudgetExceededError(CorpusCacheError):
    """A question would take the day's spend over --max-usd-per-day; nothing was sent."""

    def __init__(self, message: str, *, spent_usd: float, estimate_usd: float, cap_usd: float):
        super().__init__(message)
        self.spent_usd = spent_usd
        self.estimate_usd = estimate_usd
        self.cap_usd = cap_usd


class DeadlineExceededError(CorpusCacheError):
    """A tool call ran past its deadline and was given up."""


class SetupError(CorpusCacheError):
    """The command cannot start as configured (a bind without a token, an unreadable
    client configuration, ...)."""


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of `group` that is not itself a group: the one to report when
    several tasks failed together."""
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
