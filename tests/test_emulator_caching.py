"""Prompt caching in the emulator, through the real SDK, one rule per test.

The specification is shared/reference/anthropic-caching.md.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anthropic
import pytest

from support.emulator_control import Control
from support.prompts import MINIMUM, MODEL, document, ephemeral, text_block, total, user, words


def ask(client: anthropic.Anthropic, messages: Any, **kwargs: Any) -> Any:
    return client.messages.create(model=MODEL, max_tokens=200, messages=messages, **kwargs)


def count(client: anthropic.Anthropic, messages: Any, **kwargs: Any) -> int:
    return client.messages.count_tokens(model=MODEL, messages=messages, **kwargs).input_tokens


def sized_to(client: anthropic.Anthropic, target: int, ttl: str | None = None) -> Any:
    """A one-block request whose breakpoint prefix is exactly `target` tokens."""
    overhead = count(client, user(text_block(words(1)))) - 1
    messages = user(text_block(words(target - overhead), cache=True, ttl=ttl))
    assert count(client, messages) == target
    return messages


def test_a_request_with_a_breakpoint_writes_then_a_repeat_reads(
    client: anthropic.Anthropic,
) -> None:
    messages = user(text_block(words(1500), cache=True), text_block("What is here?"))
    first = ask(client, messages)
    second = ask(client, messages)

    prefix = count(client, user(text_block(words(1500), cache=True)))
    assert first.usage.cache_creation_input_tokens == prefix
    assert first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == prefix
    assert second.usage.cache_creation_input_tokens == 0
    assert first.usage.input_tokens == second.usage.input_tokens == count(client, messages) - prefix


def test_usage_always_adds_up_to_the_count_tokens_figure(client: anthropic.Anthropic) -> None:
    messages = user(
        document(words(700, seed=1), "a.md", ttl="1h"),
        document(words(900, seed=2), "b.md", cache=True),
        text_block("A question about rivers?"),
    )
    system = [text_block(words(600, seed=3), ttl="1h")]
    for _ in range(2):
        response = ask(client, messages, system=system)
        assert total(response.usage) == count(client, messages, system=system)
        creation = response.usage.cache_creation
        assert creation is not None
        assert (
            creation.ephemeral_5m_input_tokens + creation.ephemeral_1h_input_tokens
            == response.usage.cache_creation_input_tokens
        )


def test_the_minimum_exactly_met_is_cached(client: anthropic.Anthropic) -> None:
    response = ask(client, sized_to(client, MINIMUM))
    assert response.usage.cache_creation_input_tokens == MINIMUM
    assert response.usage.input_tokens == 0


def test_one_token_short_of_the_minimum_is_silently_uncached(client: anthropic.Anthropic) -> None:
    messages = sized_to(client, MINIMUM - 1)
    for _ in range(2):
        response = ask(client, messages)
        assert response.usage.cache_creation_input_tokens == 0
        assert response.usage.cache_read_input_tokens == 0
        assert response.usage.input_tokens == MINIMUM - 1


def test_each_model_has_its_own_minimum(client: anthropic.Anthropic) -> None:
    # 2,000 tokens: above Sonnet 4.6's 1,024, below Haiku 4.5's 4,096.
    messages = user(text_block(words(2000), cache=True))
    sonnet = client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=messages)
    haiku = client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=messages)
    assert sonnet.usage.cache_creation_input_tokens > 0
    assert haiku.usage.cache_creation_input_tokens == 0


def blocks(n: int, size: int = 120) -> list[dict[str, Any]]:
    return [text_block(words(size, seed=i)) for i in range(n)]


def with_breakpoint_at(items: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    marked = [dict(b) for b in items]
    marked[index]["cache_control"] = ephemeral()
    return marked


def test_lookback_finds_an_entry_20_positions_back(client: anthropic.Anthropic) -> None:
    stable = blocks(40)
    written_at = 10  # prefix of 11 blocks of ~120 tokens: above the minimum
    ask(client, user(*with_breakpoint_at(stable[: written_at + 1], written_at)))

    # The breakpoint itself is the first of the 20 positions checked.
    hit = ask(client, user(*with_breakpoint_at(stable, written_at + 19)))
    prefix = count(client, user(*stable[: written_at + 1]))
    assert hit.usage.cache_read_input_tokens == prefix


def test_lookback_misses_an_entry_21_positions_back(client: anthropic.Anthropic) -> None:
    stable = blocks(40)
    written_at = 10
    ask(client, user(*with_breakpoint_at(stable[: written_at + 1], written_at)))

    miss = ask(client, user(*with_breakpoint_at(stable, written_at + 20)))
    assert miss.usage.cache_read_input_tokens == 0
    assert miss.usage.cache_creation_input_tokens == count(client, user(*stable[: written_at + 21]))


def test_entries_are_written_only_at_breakpoints(client: anthropic.Anthropic) -> None:
    stable = blocks(12, size=200)
    ask(client, user(*with_breakpoint_at(stable, 11)))
    # Block 5's prefix was processed but never written: a breakpoint there cannot hit.
    shorter = ask(client, user(*with_breakpoint_at(stable[:6], 5)))
    assert shorter.usage.cache_read_input_tokens == 0
    assert shorter.usage.cache_creation_input_tokens > 0


def test_a_changed_block_invalidates_everything_after_it(client: anthropic.Anthropic) -> None:
    a, b = words(1100, seed=1), words(1100, seed=2)
    ask(client, user(text_block(a, cache=True), text_block(b, cache=True)))
    changed = ask(client, user(text_block(a, cache=True), text_block(words(1100, 5), cache=True)))
    assert changed.usage.cache_read_input_tokens == count(client, user(text_block(a)))
    assert changed.usage.cache_creation_input_tokens > 0


def test_prefix_order_is_tools_then_system_then_messages(client: anthropic.Anthropic) -> None:
    tools = [
        {"name": "lookup", "description": "Look a thing up.", "input_schema": {"type": "object"}}
    ]
    system = [text_block(words(1200), cache=True)]
    messages = user(text_block("Where is the river?"))
    ask(client, messages, system=system, tools=tools)
    again = ask(client, messages, system=system, tools=tools)
    assert again.usage.cache_read_input_tokens > 0

    other_tools = [{**tools[0], "description": "Look another thing up."}]
    changed = ask(client, messages, system=system, tools=other_tools)
    assert changed.usage.cache_read_input_tokens == 0


def test_a_fifth_breakpoint_is_rejected(client: anthropic.Anthropic) -> None:
    five = [text_block(words(300, seed=i), cache=True) for i in range(5)]
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4"):
        ask(client, user(*five))


def test_the_automatic_breakpoint_counts_toward_the_four(client: anthropic.Anthropic) -> None:
    four = [text_block(words(300, seed=i), cache=True) for i in range(4)]
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4"):
        ask(client, user(*four, text_block("And the question?")), cache_control=ephemeral())


def test_automatic_caching_caches_up_to_the_last_block(client: anthropic.Anthropic) -> None:
    messages = user(text_block(words(1500)), text_block("What is the first word?"))
    first = ask(client, messages, cache_control=ephemeral())
    assert first.usage.cache_creation_input_tokens == count(client, messages)
    assert first.usage.input_tokens == 0
    follow_up = [
        *messages,
        {"role": "assistant", "content": "River."},
        {"role": "user", "content": "And the second?"},
    ]
    second = ask(client, follow_up, cache_control=ephemeral())
    assert second.usage.cache_read_input_tokens == count(client, messages)


def test_cache_control_on_an_empty_text_block_is_rejected(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="empty text blocks"):
        ask(
            client,
            user(text_block("Hello"), {"type": "text", "text": "", "cache_control": ephemeral()}),
        )


def test_cache_control_inside_a_documents_source_is_rejected(client: anthropic.Anthropic) -> None:
    inner = {
        "type": "document",
        "source": {
            "type": "content",
            "content": [{"type": "text", "text": words(50), "cache_control": ephemeral()}],
        },
    }
    with pytest.raises(anthropic.BadRequestError, match="parent block"):
        ask(client, user(inner, text_block("What?")))


def test_an_unknown_cache_control_type_is_rejected(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="ephemeral"):
        ask(client, user({"type": "text", "text": "Hi", "cache_control": {"type": "permanent"}}))


# --- TTL ------------------------------------------------------------------------------


def test_a_5m_entry_is_alive_at_4m59s_after_its_last_hit(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.freeze()
    messages = user(text_block(words(1500), cache=True), text_block("Question?"))
    ask(client, messages)
    emulator.advance(299)
    assert ask(client, messages).usage.cache_read_input_tokens > 0
    emulator.advance(299)  # 4m59s after the last hit, 9m58s after the write
    assert ask(client, messages).usage.cache_read_input_tokens > 0


def test_a_5m_entry_is_gone_at_5m01s_after_its_last_hit(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.freeze()
    messages = user(text_block(words(1500), cache=True), text_block("Question?"))
    ask(client, messages)
    emulator.advance(299)
    assert ask(client, messages).usage.cache_read_input_tokens > 0
    emulator.advance(301)
    gone = ask(client, messages)
    assert gone.usage.cache_read_input_tokens == 0
    assert gone.usage.cache_creation_input_tokens > 0


def test_a_1h_entry_lives_an_hour(client: anthropic.Anthropic, emulator: Control) -> None:
    emulator.freeze()
    messages = user(text_block(words(1500), ttl="1h"), text_block("Question?"))
    written = ask(client, messages)
    assert written.usage.cache_creation is not None
    assert written.usage.cache_creation.ephemeral_1h_input_tokens > 0
    emulator.advance(3599)
    assert ask(client, messages).usage.cache_read_input_tokens > 0
    emulator.advance(3601)
    assert ask(client, messages).usage.cache_read_input_tokens == 0


def test_under_a_time_scale_entries_live_their_ttl_divided_by_it_as_the_buckets_refill(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.freeze()
    emulator.latency(
        mode="realistic", time_scale=20, base_seconds=0, output_tokens_per_second=1e12,
        prefill_tokens_per_second=1e12, read_tokens_per_second=1e12,
    )  # fmt: skip  # answers at once on the frozen clock
    five = user(text_block(words(1500), cache=True), text_block("Question?"))
    hour = user(text_block(words(1500, seed=1), ttl="1h"), text_block("Question?"))
    ask(client, five)
    ask(client, hour)
    emulator.advance(14.9)  # 4 min 58 s of the API's time
    assert ask(client, five).usage.cache_read_input_tokens > 0
    emulator.advance(15.1)  # 5 min 2 s after that hit
    assert ask(client, five).usage.cache_read_input_tokens == 0
    emulator.advance(179.9 - 30)  # 59 min 58 s after the 1-hour write
    assert ask(client, hour).usage.cache_read_input_tokens > 0
    emulator.advance(180.1)
    assert ask(client, hour).usage.cache_read_input_tokens == 0
    emulator.latency(mode="none")  # back to real time: a 5-minute entry lives 5 minutes
    ask(client, five)
    emulator.advance(299)
    assert ask(client, five).usage.cache_read_input_tokens > 0


def test_the_ttl_counts_from_the_start_of_the_request(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    messages = user(text_block(words(1500), cache=True))
    emulator.fault(kind="delay", delay=0.5)  # the response begins half a second after the start
    ask(client, messages)
    (entry,) = emulator.cache()
    assert entry["expires_in"] <= 300 - 0.5


def test_1h_breakpoints_must_come_before_5m_ones(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="1h"):
        ask(client, user(text_block(words(1100), cache=True), text_block(words(1100, 1), ttl="1h")))


def test_mixed_ttls_bill_1h_then_5m_writes(client: anthropic.Anthropic, emulator: Control) -> None:
    emulator.freeze()
    stable, volatile = words(1200, seed=1), words(800, seed=2)
    system = [text_block(stable, ttl="1h")]
    messages = user(text_block(volatile, cache=True), text_block("What changed?"))
    whole = count(client, user(text_block(volatile, cache=True)), system=system)

    first = ask(client, messages, system=system)
    assert first.usage.cache_creation is not None
    assert first.usage.cache_read_input_tokens == 0
    # Nothing read (A = 0): 1h from the start to the system breakpoint B, 5m from B on.
    one_hour = first.usage.cache_creation.ephemeral_1h_input_tokens
    five_minutes = first.usage.cache_creation.ephemeral_5m_input_tokens
    assert 1200 <= one_hour < 1220  # the system text plus a little framing
    assert 800 <= five_minutes < 820
    assert one_hour + five_minutes == whole

    emulator.advance(600)  # the 5m entry is gone, the 1h entry lives
    second = ask(client, messages, system=system)
    assert second.usage.cache_creation is not None
    assert second.usage.cache_read_input_tokens == one_hour
    assert second.usage.cache_creation.ephemeral_1h_input_tokens == 0
    assert second.usage.cache_creation.ephemeral_5m_input_tokens == five_minutes


# --- warming, isolation, concurrency --------------------------------------------------


def test_max_tokens_zero_warms_the_cache_without_output(client: anthropic.Anthropic) -> None:
    warm_up = user(text_block(words(1500), cache=True))
    warmed = client.messages.create(model=MODEL, max_tokens=0, messages=warm_up)
    assert warmed.content == []
    assert warmed.stop_reason == "max_tokens"
    assert warmed.usage.output_tokens == 0
    assert warmed.usage.cache_creation_input_tokens > 0

    question = ask(client, user(text_block(words(1500), cache=True), text_block("Question?")))
    assert question.usage.cache_read_input_tokens == warmed.usage.cache_creation_input_tokens


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"stream": True}, "stream"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
            "structured",
        ),
    ],
)
def test_max_tokens_zero_is_rejected_where_output_is_implied(
    client: anthropic.Anthropic, extra: dict[str, Any], message: str
) -> None:
    tools = [{"name": "t", "input_schema": {"type": "object"}}] if "tool_choice" in extra else None
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 0, "messages": user(text_block("Hi"))}
    body.update(extra)
    if tools:
        body["tools"] = tools
    with pytest.raises(anthropic.BadRequestError, match=message):
        client.post("/v1/messages", cast_to=object, body=body)


def test_caches_are_isolated_per_api_key(
    client: anthropic.Anthropic, running_emulator: Any
) -> None:
    messages = user(text_block(words(1500), cache=True))
    ask(client, messages)
    with anthropic.Anthropic(
        base_url=running_emulator.base_url, api_key="another-workspace"
    ) as other:
        response = other.messages.create(model=MODEL, max_tokens=10, messages=messages)
    assert response.usage.cache_read_input_tokens == 0
    assert response.usage.cache_creation_input_tokens > 0


def test_an_entry_is_readable_only_once_the_response_writing_it_has_begun(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    messages = user(text_block(words(1500), cache=True), text_block("Question?"))
    emulator.fault(kind="delay", delay=1.0)  # the first response begins a second late
    results: dict[str, Any] = {}
    first = threading.Thread(target=lambda: results.setdefault("first", ask(client, messages)))
    first.start()
    deadline = time.monotonic() + 5
    while not emulator.cache() and time.monotonic() < deadline:
        time.sleep(0.01)  # until the first request's entry exists, pending
    assert emulator.cache()[0]["readable"] is False

    second = ask(client, messages)  # arrives while the first has not begun: a second write
    first.join()
    third = ask(client, messages)

    assert results["first"].usage.cache_creation_input_tokens > 0
    assert second.usage.cache_creation_input_tokens > 0
    assert second.usage.cache_read_input_tokens == 0
    assert third.usage.cache_read_input_tokens == results["first"].usage.cache_creation_input_tokens


def test_a_request_that_fails_before_beginning_caches_nothing(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    messages = user(text_block(words(1500), cache=True))
    emulator.fault(status=529, error_type="overloaded_error")
    with pytest.raises(anthropic.APIStatusError):
        ask(client, messages)
    assert emulator.cache() == []
    assert ask(client, messages).usage.cache_creation_input_tokens > 0


@pytest.mark.anyio
async def test_the_async_client_sees_the_same_accounting(aclient: anthropic.AsyncAnthropic) -> None:
    messages = user(text_block(words(1500), cache=True), text_block("Question?"))
    async with aclient:
        first = await aclient.messages.create(model=MODEL, max_tokens=50, messages=messages)
        second = await aclient.messages.create(model=MODEL, max_tokens=50, messages=messages)
        counted = await aclient.messages.count_tokens(model=MODEL, messages=messages)
    assert first.usage.cache_creation_input_tokens == second.usage.cache_read_input_tokens > 0
    assert total(first.usage) == total(second.usage) == counted.input_tokens
