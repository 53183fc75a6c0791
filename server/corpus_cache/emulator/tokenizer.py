"""A deterministic stand-in for Claude's tokenizers.

Text is split into words, single punctuation marks and runs of whitespace. Under the
"classic" family (Claude before 4.7) a word of n characters costs ceil(n / 5.5) tokens
(1 up to 5 characters, 2 up to 11, ...), each punctuation mark one token, and whitespace
nothing except long runs (indentation), which cost one token per 8 characters past the
first 4. That gives about 4 characters per token on English prose. The "dense" family
(Claude 4.7+ and 5.x) costs ceil(1.3 x classic) for the same text: 30% more.

A request's count is the sum of the counts of its blocks plus fixed framing costs (see
`FRAMING`); billing and count_tokens both use it, so they always agree.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

from corpus_cache.models.catalog import Tokenizer

_PIECE = re.compile(r"\w+|\s+|[^\w\s]", re.UNICODE)

_CHARS_PER_WORD_TOKEN = 5.5
_DENSE_FACTOR = 1.3

# Tokens charged for the structure around content, the same for both families.
FRAMING = {
    "request": 3,  # start of the prompt
    "tool": 4,  # each tool definition, on top of its JSON text
    "system_block": 2,
    "message": 4,  # each message's role header
    "block": 1,  # each content block in a message
    "document": 6,  # each document block, on top of its title, context and text
}


def _word_cost(length: int) -> int:
    return max(1, math.ceil(length / _CHARS_PER_WORD_TOKEN))


def _whitespace_cost(length: int) -> int:
    return 0 if length <= 4 else math.ceil((length - 4) / 8)


@lru_cache(maxsize=256)
def _count_cached(text: str, family: Tokenizer) -> int:
    return _count(text, family)


def _count(text: str, family: Tokenizer) -> int:
    total = 0
    for match in _PIECE.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isspace():
            total += _whitespace_cost(len(piece))
        elif first.isalnum() or first == "_":
            total += _word_cost(len(piece))
        else:
            total += 1
    if family == "dense":
        return math.ceil(total * _DENSE_FACTOR)
    return total


def count_text(text: str, family: Tokenizer) -> int:
    """Tokens in `text` for a tokenizer family. Deterministic; memoised for long texts."""
    if len(text) > 256:
        return _count_cached(text, family)
    return _count(text, family)
