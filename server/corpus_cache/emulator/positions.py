"""A request flattened for caching: positions in prefix order, with their hashes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from corpus_cache.models.catalog import ModelSpec

Ttl = Literal["5m", "1h"]
Section = Literal["tools", "system", "messages"]
TTL_SECONDS: dict[Ttl, int] = {"5m": 300, "1h": 3600}


@dataclass(frozen=True)
class Position:
    section: Section
    tokens: int
    cumulative_tokens: int
    prefix_hash: str
    breakpoint: Ttl | None


@dataclass(frozen=True)
class Source:
    """Text the extractive answer may quote: a system block or a document."""

    text: str
    document_index: int | None  # None for system text
    title: str | None
    citable: bool


@dataclass(frozen=True)
class Prompt:
    model: ModelSpec
    positions: tuple[Position, ...]
    breakpoints: tuple[int, ...]  # position indices, ascending
    question: str
    sources: tuple[Source, ...]
    citations: bool
    section_hashes: dict[str, str]  # for cache diagnostics
    message_hashes: tuple[str, ...]

    @property
    def total_tokens(self) -> int:
        return self.positions[-1].cumulative_tokens if self.positions else 0

    def ttl_at(self, index: int) -> Ttl:
        ttl = self.positions[index].breakpoint
        assert ttl is not None
        return ttl


@dataclass(frozen=True)
class MessagesRequest:
    prompt: Prompt
    max_tokens: int
    stream: bool
    previous_message_id: str | None
    wants_diagnostics: bool
