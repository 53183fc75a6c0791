"""Validate a Messages API body and flatten it into cache positions.

A *position* is one cacheable block of the prompt, in prefix order: each tool definition,
each system text block, each content block of each message. Every position carries the
hash of the whole prompt up to and including it (the key an entry written there would
have), its token count, and the TTL of the breakpoint on it, if any. Everything the API
bills as prompt is attributed to some position, so the token counts add up.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from corpus_cache.errors import UnknownModelError
from corpus_cache.models.catalog import Catalog, ModelSpec

from .errors import invalid, not_found
from .positions import TTL_SECONDS, MessagesRequest, Position, Prompt, Section, Source, Ttl
from .tokenizer import FRAMING, count_text
from .validation import (
    check_context,
    check_fields,
    check_sampling,
    check_warming,
    structured_output,
)

MAX_BREAKPOINTS = 4

_MESSAGES_FIELDS = {
    "model", "messages", "max_tokens", "system", "tools", "tool_choice", "stream",
    "temperature", "top_p", "top_k", "stop_sequences", "metadata", "thinking",
    "cache_control", "diagnostics", "service_tier", "output_config", "output_format",
    "container", "context_management", "mcp_servers", "inference_geo",
}  # fmt: skip
_COUNT_FIELDS = {
    "model", "messages", "system", "tools", "tool_choice", "thinking", "cache_control",
    "output_config", "output_format", "context_management", "mcp_servers",
}  # fmt: skip

# Block types that may carry cache_control, by where they appear.
_CACHEABLE_MESSAGE_BLOCKS = {
    "text", "image", "document", "tool_use", "tool_result", "search_result",
    "server_tool_use", "web_search_tool_result",
}  # fmt: skip
_KNOWN_MESSAGE_BLOCKS = _CACHEABLE_MESSAGE_BLOCKS | {"thinking", "redacted_thinking"}


def _digested(value: Any) -> Any:
    """The value with every long string replaced by its SHA-256: the same identity, without
    escaping a document's whole text into JSON on every request."""
    if isinstance(value, str) and len(value) > 1024:
        return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    if isinstance(value, dict):
        return {k: _digested(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_digested(v) for v in value]
    return value


def _canonical(value: Any) -> bytes:
    """The value as JSON, keys sorted: what the tokenizer counts for tools and inputs."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )


def _identity(value: Any) -> bytes:
    """What a block contributes to the prefix hash."""
    return _canonical(_digested(value))


def _without_cache_control(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


def _ttl_of(cache_control: Any, where: str) -> Ttl:
    if not isinstance(cache_control, dict) or cache_control.get("type") != "ephemeral":
        raise invalid(f"{where}.cache_control: type must be 'ephemeral'")
    extra = set(cache_control) - {"type", "ttl"}
    if extra:
        raise invalid(f"{where}.cache_control.{sorted(extra)[0]}: Extra inputs are not permitted")
    ttl = cache_control.get("ttl", "5m")
    if ttl not in TTL_SECONDS:
        raise invalid(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return ttl  # type: ignore[no-any-return]


def resolve_model(catalog: Catalog, body: dict[str, Any]) -> ModelSpec:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required")
    try:
        return catalog.get(model)
    except UnknownModelError:
        raise not_found(f"model: {model}") from None


class _Builder:
    """Accumulates positions while walking the prompt in prefix order."""

    def __init__(self, model: ModelSpec, salts: dict[Section, bytes]) -> None:
        self.model = model
        self.salts = salts
        self.positions: list[Position] = []
        self.breakpoints: list[int] = []
        self._hash = hashlib.sha256(b"model:" + model.id.encode()).digest()
        self._entered: set[Section] = set()
        self._pending_framing = FRAMING["request"]
        self.section_hashes: dict[str, str] = {}

    def count(self, text: str) -> int:
        return count_text(text, self.model.tokenizer)

    def add_framing(self, tokens: int) -> None:
        self._pending_framing += tokens

    def add(self, section: Section, block: dict[str, Any], tokens: int, ttl: Ttl | None) -> None:
        order: list[Section] = ["tools", "system", "messages"]
        for name in order[: order.index(section) + 1]:
            if name not in self._entered:
                self._entered.add(name)
                self._hash = hashlib.sha256(self._hash + b"|" + self.salts[name]).digest()
        self._hash = hashlib.sha256(self._hash + _identity(_without_cache_control(block))).digest()
        tokens += self._pending_framing
        self._pending_framing = 0
        cumulative = (self.positions[-1].cumulative_tokens if self.positions else 0) + tokens
        if ttl is not None:
            self.breakpoints.append(len(self.positions))
        self.positions.append(Position(section, tokens, cumulative, self._hash.hex(), ttl))
        self.section_hashes[section] = self._hash.hex()


def _text_of_content(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return []


def _check_no_nested_cache_control(blocks: Any, where: str) -> None:
    if not isinstance(blocks, list):
        return
    for i, inner in enumerate(blocks):
        if isinstance(inner, dict) and "cache_control" in inner:
            raise invalid(
                f"{where}.{i}.cache_control: cache_control cannot be set inside {where}; "
                "set it on the parent block"
            )


class _PromptWalker:
    def __init__(self, body: dict[str, Any], model: ModelSpec) -> None:
        self.body = body
        self.sources: list[Source] = []
        self.documents: list[tuple[str, bool]] = []  # (where, citations enabled)
        salts: dict[Section, bytes] = {
            "tools": b"",
            "system": _identity({"citations": self._citations_requested()}),
            "messages": _identity(
                {"tool_choice": body.get("tool_choice"), "thinking": body.get("thinking")}
            ),
        }
        self.b = _Builder(model, salts)
        self.message_hashes: list[str] = []

    def _citations_requested(self) -> bool:
        for message in self.body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict) and block.get("type") == "document":
                    citations = block.get("citations")
                    if isinstance(citations, dict) and citations.get("enabled"):
                        return True
        return False

    def walk(self) -> Prompt:
        self._tools()
        self._system()
        self._messages()
        self._automatic_breakpoint()
        self._check_breakpoints()
        enabled = {flag for _, flag in self.documents}
        if len(enabled) > 1:
            raise invalid(
                "citations: citations must be enabled on all documents of a request or on none"
            )
        if enabled == {True} and structured_output(self.body):
            raise invalid("citations cannot be used together with a structured output format")
        return Prompt(
            model=self.b.model,
            positions=tuple(self.b.positions),
            breakpoints=tuple(sorted(self.b.breakpoints)),
            question=self._question(),
            sources=tuple(self.sources),
            citations=enabled == {True},
            section_hashes=dict(self.b.section_hashes),
            message_hashes=tuple(self.message_hashes),
        )

    def _ttl(self, block: dict[str, Any], where: str) -> Ttl | None:
        if "cache_control" not in block or block["cache_control"] is None:
            return None
        return _ttl_of(block["cache_control"], where)

    def _tools(self) -> None:
        tools = self.body.get("tools")
        if tools is None:
            return
        if not isinstance(tools, list):
            raise invalid("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            where = f"tools.{i}"
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise invalid(f"{where}.name: Field required")
            if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
                raise invalid(f"{where}.input_schema: Field required")
            tokens = FRAMING["tool"] + self.b.count(
                _canonical(_without_cache_control(tool)).decode()
            )
            self.b.add("tools", tool, tokens, self._ttl(tool, where))

    def _system(self) -> None:
        system = self.body.get("system")
        if system is None:
            return
        blocks: list[Any] = [{"type": "text", "text": system}] if isinstance(system, str) else []
        if isinstance(system, list):
            blocks = system
        elif not isinstance(system, str):
            raise invalid("system: Input should be a valid string or list of text blocks")
        for i, block in enumerate(blocks):
            where = f"system.{i}"
            if not isinstance(block, dict) or block.get("type") != "text":
                raise invalid(f"{where}.type: Input should be 'text'")
            text = block.get("text")
            if not isinstance(text, str):
                raise invalid(f"{where}.text: Field required")
            if not text:
                if "cache_control" in block:
                    raise invalid(f"{where}: cache_control cannot be set for empty text blocks")
                if isinstance(system, list):
                    raise invalid(f"{where}: text content blocks must be non-empty")
                continue
            tokens = FRAMING["system_block"] + self.b.count(text)
            self.b.add("system", block, tokens, self._ttl(block, where))
            self.sources.append(Source(text, None, None, False))

    def _messages(self) -> None:
        messages = self.body.get("messages")
        if not isinstance(messages, list):
            raise invalid("messages: Field required")
        if not messages:
            raise invalid("messages: at least one message is required")
        for m, message in enumerate(messages):
            where = f"messages.{m}"
            if not isinstance(message, dict):
                raise invalid(f"{where}: Input should be a valid dictionary")
            role = message.get("role")
            if role not in ("user", "assistant"):
                raise invalid(f"{where}.role: Input should be 'user' or 'assistant'")
            content = message.get("content")
            if isinstance(content, str):
                if not content and m != len(messages) - 1:
                    raise invalid(f"{where}: text content blocks must be non-empty")
                blocks: list[Any] = [{"type": "text", "text": content}] if content else []
            elif isinstance(content, list):
                blocks = content
            else:
                raise invalid(f"{where}.content: Field required")
            if not blocks and not (role == "assistant" and m == len(messages) - 1):
                raise invalid(f"{where}.content: at least one content block is required")
            self.b.add_framing(FRAMING["message"])
            for i, block in enumerate(blocks):
                self._message_block(block, f"{where}.content.{i}", role, first=i == 0)
            self.message_hashes.append(self.b.section_hashes.get("messages", ""))

    def _message_block(self, block: Any, where: str, role: str, *, first: bool) -> None:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid(f"{where}.type: Field required")
        kind = block["type"]
        if kind not in _KNOWN_MESSAGE_BLOCKS:
            raise invalid(f"{where}.type: unsupported content block type {kind!r}")
        if "cache_control" in block and kind not in _CACHEABLE_MESSAGE_BLOCKS:
            raise invalid(f"{where}.cache_control: cache_control cannot be set on {kind} blocks")
        tokens = FRAMING["block"] + self._block_tokens(block, where, role)
        # The role and the message boundary are part of the prefix.
        keyed = {**block, "_role": role, "_message_start": first}
        self.b.add("messages", keyed, tokens, self._ttl(block, where))

    def _block_tokens(self, block: dict[str, Any], where: str, role: str) -> int:
        kind = block["type"]
        count = self.b.count
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise invalid(f"{where}.text: Field required")
            if not text.strip():
                if "cache_control" in block:
                    raise invalid(f"{where}: cache_control cannot be set for empty text blocks")
                raise invalid(f"{where}: text content blocks must contain non-whitespace text")
            for c, citation in enumerate(block.get("citations") or []):
                if isinstance(citation, dict) and "cache_control" in citation:
                    raise invalid(
                        f"{where}.citations.{c}.cache_control: "
                        "cache_control cannot be set on citations"
                    )
            return count(text)
        if kind == "document":
            return self._document(block, where)
        if kind == "tool_result":
            _check_no_nested_cache_control(block.get("content"), f"{where}.content")
            return 2 + sum(count(t) for t in _text_of_content(block.get("content")))
        if kind == "tool_use":
            return (
                4
                + count(str(block.get("name", "")))
                + count(_canonical(block.get("input", {})).decode())
            )
        if kind == "image":
            return 1_600  # a typical photo; the emulator does not decode images
        if kind in ("thinking", "redacted_thinking"):
            return count(str(block.get("thinking", block.get("data", ""))))
        return count(_canonical(_without_cache_control(block)).decode())

    def _document(self, block: dict[str, Any], where: str) -> int:
        source = block.get("source")
        if not isinstance(source, dict):
            raise invalid(f"{where}.source: Field required")
        _check_no_nested_cache_control(source.get("content"), f"{where}.source.content")
        if "cache_control" in source:
            raise invalid(
                f"{where}.source.cache_control: cache_control cannot be set inside a document's "
                "source; set it on the document block"
            )
        citations = block.get("citations")
        enabled = bool(isinstance(citations, dict) and citations.get("enabled"))
        index = len(self.documents)
        self.documents.append((where, enabled))
        title = block.get("title") if isinstance(block.get("title"), str) else None
        tokens = FRAMING["document"]
        tokens += self.b.count(title or "") + self.b.count(str(block.get("context") or ""))
        kind = source.get("type")
        if kind == "text":
            data = source.get("data")
            if not isinstance(data, str):
                raise invalid(f"{where}.source.data: Field required")
            self.sources.append(Source(data, index, title, enabled))
            return tokens + self.b.count(data)
        if kind == "content":
            texts = _text_of_content(source.get("content"))
            self.sources.append(Source("\n".join(texts), index, title, False))
            return tokens + sum(self.b.count(t) for t in texts)
        if kind in ("base64", "url", "file"):
            payload = str(source.get("data", source.get("url", source.get("file_id", ""))))
            return tokens + max(1, len(payload) * 3 // 16)  # base64 bytes → ~4 bytes a token
        raise invalid(f"{where}.source.type: unsupported document source type {kind!r}")

    def _automatic_breakpoint(self) -> None:
        top = self.body.get("cache_control")
        if top is None:
            return
        ttl = _ttl_of(top, "cache_control")
        if not self.b.positions:
            return
        last = len(self.b.positions) - 1
        self.b.breakpoints.append(last)
        current = self.b.positions[last]
        if current.breakpoint is None:
            self.b.positions[last] = Position(
                current.section, current.tokens, current.cumulative_tokens,
                current.prefix_hash, ttl,
            )  # fmt: skip

    def _check_breakpoints(self) -> None:
        found = len(self.b.breakpoints)
        if found > MAX_BREAKPOINTS:
            raise invalid(
                f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {found}."
            )
        self.b.breakpoints = sorted(set(self.b.breakpoints))
        seen_5m = False
        for index in self.b.breakpoints:
            ttl = self.b.positions[index].breakpoint
            if ttl == "5m":
                seen_5m = True
            elif seen_5m:
                raise invalid(
                    "cache_control: a ttl='1h' cache_control block must not come after a "
                    "ttl='5m' block; place every 1h breakpoint before every 5m breakpoint"
                )

    def _question(self) -> str:
        for message in reversed(self.body["messages"]):
            if message.get("role") == "user":
                return "\n".join(_text_of_content(message.get("content")))
        return ""


def parse_messages_request(body: Any, catalog: Catalog) -> MessagesRequest:
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    check_fields(body, _MESSAGES_FIELDS)
    model = resolve_model(catalog, body)
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise invalid("max_tokens: Input should be a non-negative integer")
    if max_tokens > model.max_output_tokens:
        raise invalid(
            f"max_tokens: {max_tokens} > {model.max_output_tokens}, which is the maximum "
            f"allowed number of output tokens for {model.id}"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream: Input should be a valid boolean")
    if max_tokens == 0:
        check_warming(body, stream)
    check_sampling(body)
    diagnostics = body.get("diagnostics")
    if diagnostics is not None and not isinstance(diagnostics, dict):
        raise invalid("diagnostics: Input should be a valid dictionary")
    previous = diagnostics.get("previous_message_id") if diagnostics else None
    if previous is not None and not isinstance(previous, str):
        raise invalid("diagnostics.previous_message_id: Input should be a valid string")
    prompt = _PromptWalker(body, model).walk()
    check_context(prompt)
    return MessagesRequest(prompt, max_tokens, stream, previous, diagnostics is not None)


def parse_count_tokens_request(body: Any, catalog: Catalog) -> Prompt:
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    check_fields(body, _COUNT_FIELDS)
    model = resolve_model(catalog, body)
    return _PromptWalker(body, model).walk()
