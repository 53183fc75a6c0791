"""Small pieces of English the commands and tools share. Pure."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 document`, `2 documents`; `nouns` for an irregular plural."""
    return f"{count:,} {noun if count == 1 else (nouns or noun + 's')}"


def usd(value: float) -> str:
    """Dollars to four places, the sign before the symbol: `-$0.0312`."""
    return f"{'-' if value < 0 else ''}${abs(value):.4f}"


def approximately(count: int, estimated: bool) -> str:
    """A token figure as shown: `72,114`, or `~72,100` when it rests on an estimate (three
    significant figures: the estimate is not better than that)."""
    if not estimated:
        return f"{count:,}"
    digits = len(str(abs(count)))
    return f"~{round(count, -max(0, digits - 3)):,}"


def tokens_figure(count: int, estimated: bool) -> str:
    """`72,114 tokens`, or `~72,100 tokens (estimated)`."""
    if not estimated:
        return plural(count, "token")
    return f"{approximately(count, True)} tokens (estimated)"


def about_seconds(seconds: float) -> str:
    """A wait as people say it, rounded up: `about 40 s`, `about 2 min 10 s`, `about 3 h`."""
    whole = max(1, int(-(-seconds // 1)))
    if whole < 60:
        return f"about {whole} s"
    if whole < 3600:
        minutes, rest = divmod(-(-whole // 10) * 10, 60)
        return f"about {minutes} min" + (f" {rest} s" if rest else "")
    return f"about {-(-whole // 3600)} h"
