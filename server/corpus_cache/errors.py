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
