"""Errors a user can act on: each message says what happened and what to do.

One tree, so that a caller catches `CorpusCacheError` and never a tuple:

    CorpusCacheError
    ├── InvalidArgumentError      a tool argument or a question the server refuses
    ├── NotInCorpusError          a path that names nothing the scan admitted
    ├── CorpusNotFoundError       the corpus folder does not exist (or is gone)
    │   └── CorpusReplacedError   its path now names another folder than the one served
    ├── CorpusTooLargeError       no shard can hold what was asked
    ├── ModelTableError           the model table or a user's override file is unusable
    │   ├── UnknownModelError     a model id the table does not list
    │   └── LimitsTableError      the rate-limits table or a user's limits file is unusable
    ├── ApiCallError              a Messages API call failed, after the retries
    │   ├── IncompleteResponseError   a response stream ended before `message_stop`
    │   └── BeyondRateLimitError      more than the rate limits ever allow; not sent
    ├── RateLimitWaitError        the rate limits would hold a question past the client's
    │                             deadline; not sent, and says when to ask again
    ├── BudgetExceededError       a request would pass --max-usd-per-day; nothing was sent
    ├── LedgerUnavailableError    the ledger cannot be read now (a write is journaled instead)
    ├── DeadlineExceededError     a tool call ran past its deadline
    ├── IndexingError             the folder's first index has not ended (or failed)
    ├── CacheBuildingError        the cache is being written slice by slice; ask again later
    └── SetupError                the command cannot start as configured

The MCP surface turns any of them into a tool error the model reads; the command line
prints the message and exits 2. Anything else is a bug, and is left to propagate.
"""

from __future__ import annotations


class CorpusCacheError(Exception):
    """Base of every error the tools report back to the user or model."""


class InvalidArgumentError(CorpusCacheError):
    pass


class NotInCorpusError(CorpusCacheError):
    pass


class CorpusNotFoundError(CorpusCacheError):
    """The corpus folder does not exist, or is not a folder."""


class CorpusReplacedError(CorpusNotFoundError):
    """The corpus path names another folder than the one the server started on."""


class CorpusTooLargeError(CorpusCacheError):
    pass


class ModelTableError(CorpusCacheError):
    """The model table or a user's override file is not usable."""


class UnknownModelError(ModelTableError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown model {self.name!r}; known models: {', '.join(self.known)}"


class LimitsTableError(ModelTableError):
    """The rate-limits table (models/limits.toml) or a user's limits file is not usable."""


class ApiCallError(CorpusCacheError):
    """The Messages API call failed after the caller's retries."""


class IncompleteResponseError(ApiCallError):
    """A response stream ended before `message_stop`: what arrived is not the answer."""


class BeyondRateLimitError(ApiCallError):
    """A request larger than the account's rate limits ever allow in one minute; not sent."""


class BudgetExceededError(CorpusCacheError):
    """A question would take the day's spend over --max-usd-per-day; nothing was sent."""

    def __init__(self, message: str, *, spent_usd: float, estimate_usd: float, cap_usd: float):
        super().__init__(message)
        self.spent_usd = spent_usd
        self.estimate_usd = estimate_usd
        self.cap_usd = cap_usd


class LedgerUnavailableError(CorpusCacheError):
    """The ledger's file cannot be read now (corrupt, unreadable, missing its folder); the
    message says why and what to do."""


class RateLimitWaitError(CorpusCacheError):
    """A question the rate limits would hold longer than the client waits; not sent.
    `wait_seconds`: how long the buckets need before it could be sent."""

    def __init__(self, message: str, *, wait_seconds: float):
        super().__init__(message)
        self.wait_seconds = wait_seconds


class DeadlineExceededError(CorpusCacheError):
    """A tool call ran past its deadline and was given up."""


class IndexingError(CorpusCacheError):
    """The first index of the folder is still running (the message says how far it is and
    when to ask again), or it failed (the message says why)."""


class CacheBuildingError(CorpusCacheError):
    """A question came while its shard's cache is being built in slices (plan/staging.py)
    and the build will not be done within the client's patience; nothing was sent, and
    the build goes on. The message says how far it is and when to ask again."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SetupError(CorpusCacheError):
    """The command cannot start as configured (a bind without a token, an unreadable
    client configuration, ...)."""


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of `group` that is not itself a group: the one to report when
    several tasks failed together."""
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
