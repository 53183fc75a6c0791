"""Building blocks for requests in tests: blocks of a known token count, documents."""

from __future__ import annotations

from typing import Any

from corpus_cache.emulator.tokenizer import count_text

# Classic tokenizer, minimum 1,024 tokens: easy arithmetic for cache edges.
MODEL = "claude-sonnet-4-6"
MINIMUM = 1024

WORDS = [
    "river",
    "stone",
    "lamp",
    "orbit",
    "cedar",
    "maple",
    "tulip",
    "ember",
    "flint",
    "delta",
    "amber",
    "frost",
    "pearl",
    "sage",
    "birch",
    "coral",
    "dune",
    "fern",
    "glade",
    "heron",
]


def words(n: int, seed: int = 0) -> str:
    """n tokens of text under the classic tokenizer: n words of five letters or fewer."""
    text = " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(n))
    assert count_text(text, "classic") == n
    return text


def ephemeral(ttl: str | None = None) -> dict[str, str]:
    return {"type": "ephemeral", "ttl": ttl} if ttl else {"type": "ephemeral"}


def text_block(text: str, ttl: str | None = None, cache: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cache or ttl:
        block["cache_control"] = ephemeral(ttl)
    return block


def document(data: str, title: str, *, citations: bool = True, ttl: str | None = None,
             cache: bool = False) -> dict[str, Any]:  # fmt: skip
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": data},
        "title": title,
        "citations": {"enabled": citations},
    }
    if cache or ttl:
        block["cache_control"] = ephemeral(ttl)
    return block


def user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


def total(usage: Any) -> int:
    return int(
        usage.input_tokens
        + (usage.cache_read_input_tokens or 0)
        + (usage.cache_creation_input_tokens or 0)
    )
