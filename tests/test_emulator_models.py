"""/_emulator/models: an emulator that disagrees with the model table, on purpose.

`corpus-cache probe` must find each disagreement (tests/test_probe.py); these tests check
that each setting changes what the emulator does, through the real SDK, one per setting.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import pytest

from support.emulator_control import Control
from support.prompts import MODEL, ephemeral, text_block, user, words


def ask(client: anthropic.Anthropic, messages: Any) -> Any:
    return client.messages.create(model=MODEL, max_tokens=0, messages=messages)


def blocks(n: int, size: int = 120) -> list[dict[str, Any]]:
    return [text_block(words(size, seed=i)) for i in range(n)]


def with_breakpoint_at(items: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    marked = [dict(b) for b in items]
    marked[index]["cache_control"] = ephemeral()
    return marked


def test_another_minimum_caches_a_prompt_the_table_would_not(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    messages = user(text_block(words(700), cache=True))  # below Sonnet 4.6's 1,024
    assert ask(client, messages).usage.cache_creation_input_tokens == 0

    emulator.post("models", {MODEL: {"min_cacheable_tokens": 512}})
    assert ask(client, messages).usage.cache_creation_input_tokens > 0


def test_another_lookback_misses_an_entry_the_table_would_find(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.post("models", {MODEL: {"cache_lookback": 10}})
    stable = blocks(30)
    written_at = 10
    ask(client, user(*with_breakpoint_at(stable[: written_at + 1], written_at)))

    # The miss first: the hit writes an entry that a farther breakpoint would find.
    miss = ask(client, user(*with_breakpoint_at(stable, written_at + 10)))
    hit = ask(client, user(*with_breakpoint_at(stable, written_at + 9)))
    assert hit.usage.cache_read_input_tokens > 0
    assert miss.usage.cache_read_input_tokens == 0


def test_another_read_multiplier_changes_what_the_log_says_was_billed(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    messages = user(text_block(words(1500), cache=True))
    ask(client, messages)
    at_table = ask(client, messages)
    emulator.post("models", {MODEL: {"cache_read_multiplier": 0.2}})
    doubled = ask(client, messages)

    billed = {entry["id"]: entry["billed"]["usd"] for entry in emulator.log()}
    read = at_table.usage.cache_read_input_tokens
    assert doubled.usage.cache_read_input_tokens == read
    # Sonnet 4.6: $3 per million input tokens; reads at 0.1x, then at 0.2x.
    assert billed[at_table.id] == pytest.approx(read * 0.1 * 3e-6)
    assert billed[doubled.id] == pytest.approx(read * 0.2 * 3e-6)


def test_a_write_multiplier_changes_what_the_log_says_was_billed(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.post("models", {MODEL: {"cache_write_1h_multiplier": 3.0}})
    written = ask(client, user(text_block(words(1500), ttl="1h")))
    billed = {entry["id"]: entry["billed"]["usd"] for entry in emulator.log()}
    tokens = written.usage.cache_creation_input_tokens
    assert billed[written.id] == pytest.approx(tokens * 3.0 * 3e-6)


def test_a_count_drift_makes_count_tokens_report_more_than_is_billed(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    messages = user(text_block(words(300)))
    counted = client.messages.count_tokens(model=MODEL, messages=messages).input_tokens
    emulator.post("models", {MODEL: {"count_tokens_extra": 40}})
    drifted = client.messages.count_tokens(model=MODEL, messages=messages).input_tokens
    billed = ask(client, messages).usage.input_tokens

    assert drifted == counted + 40
    assert billed == counted


def test_the_settings_are_shown_replaced_and_forgotten_on_reset(emulator: Control) -> None:
    emulator.post("models", {MODEL: {"min_cacheable_tokens": 512}})
    shown = emulator.post("models", {MODEL: {"cache_lookback": 5}})
    assert shown == {"models": {MODEL: {"cache_lookback": 5}}}
    emulator.post("reset")
    assert emulator.http.get("/_emulator/models").json() == {"models": {}}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({MODEL: {"id": "other"}}, 400),
        ({MODEL: {"min_cacheable_tokens": 0}}, 400),
        ({MODEL: {}}, 400),
        ({MODEL: {"count_tokens_extra": 1.5}}, 400),
        ({"claude-unknown-9": {"cache_lookback": 3}}, 404),
    ],
)
def test_a_setting_that_is_not_one_or_not_valid_is_refused(
    emulator: Control, body: dict[str, Any], status: int
) -> None:
    response = emulator.http.post("/_emulator/models", json=body)
    assert response.status_code == status
    assert emulator.http.get("/_emulator/models").json() == {"models": {}}


def test_an_emulator_without_controls_has_no_model_settings() -> None:
    from corpus_cache.emulator import start_in_thread

    with start_in_thread(api_key="k", controls=False) as running:
        response = httpx2.post(
            f"{running.base_url}/_emulator/models", json={}, headers={"x-api-key": "k"}
        )
        assert response.status_code == 404
