"""Top-level checks of a Messages API body that the real API makes, with its messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import invalid

if TYPE_CHECKING:
    from .positions import Prompt


def structured_output(body: dict[str, Any]) -> bool:
    config = body.get("output_config")
    return bool(body.get("output_format")) or bool(
        isinstance(config, dict) and config.get("format")
    )


def check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise invalid(f"{extra[0]}: Extra inputs are not permitted")


def check_sampling(body: dict[str, Any]) -> None:
    for name, low, high in (("temperature", 0.0, 1.0), ("top_p", 0.0, 1.0)):
        value = body.get(name)
        if value is not None and (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            raise invalid(f"{name}: Input should be a number between {low} and {high}")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise invalid("top_k: Input should be a non-negative integer")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise invalid("stop_sequences: Input should be a list of strings")


def check_warming(body: dict[str, Any], stream: bool) -> None:
    """`max_tokens: 0` only warms the cache; the API refuses it where output is implied."""
    if stream:
        raise invalid("max_tokens: 0 is not supported with stream: true")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise invalid("max_tokens: 0 is not supported with a forced tool_choice")
    if structured_output(body):
        raise invalid("max_tokens: 0 is not supported with a structured output format")
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        raise invalid("max_tokens: 0 is not supported with extended thinking enabled")


def check_context(prompt: Prompt) -> None:
    if prompt.total_tokens > prompt.model.context_window:
        raise invalid(
            f"prompt is too long: {prompt.total_tokens} tokens > "
            f"{prompt.model.context_window} maximum"
        )
