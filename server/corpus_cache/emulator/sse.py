"""The Messages API's server-sent events, in the order the real API sends them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

_CHUNK = 48  # characters of text per text_delta


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def message_events(message: dict[str, Any]) -> Iterator[bytes]:
    """message_start (with the cache usage), the content blocks, message_delta, message_stop."""
    usage = message["usage"]
    start_usage = {**usage, "output_tokens": min(1, usage["output_tokens"])}
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = start_usage
    yield _event("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(message["content"]):
        opening: dict[str, Any] = {"type": "text", "text": ""}
        if "citations" in block:
            opening["citations"] = []
        yield _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        if index == 0:
            yield _event("ping", {"type": "ping"})
        for citation in block.get("citations") or []:
            delta = {"type": "citations_delta", "citation": citation}
            yield _event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        text = block["text"]
        for offset in range(0, len(text), _CHUNK):
            delta = {"type": "text_delta", "text": text[offset : offset + _CHUNK]}
            yield _event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    final_usage = {
        "output_tokens": usage["output_tokens"],
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
    }
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage})
    yield _event("message_stop", {"type": "message_stop"})


def error_event(error_type: str, message: str) -> bytes:
    """An error in a response that has begun, as the API sends it in the stream."""
    return _event("error", {"type": "error", "error": {"type": error_type, "message": message}})
