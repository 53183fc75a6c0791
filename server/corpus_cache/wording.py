"""Small pieces of English the commands and tools share. Pure."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 document`, `2 documents`; `nouns` for an irregular plural."""
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"


def usd(value: float) -> str:
    """Dollars to four places, the sign before the symbol: `-$0.0312`."""
    return f"{'-' if value < 0 else ''}${abs(value):.4f}"
