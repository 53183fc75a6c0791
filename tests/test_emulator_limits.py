"""Rate limits and latency in the emulator, through the real SDK, one rule per test.

The specification is shared/reference/anthropic-caching.md ("Rate limits", "Latency").
Every test runs on the frozen virtual clock, or with latencies scaled to microseconds.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import anthropic
import pytest

from corpus_cache.emulator import RunningEmulator
from support.emulator_control import Control
from support.prompts import MODEL, text_block, total, user, words

T0 = 1_800_000_000.0  # where the frozen clock starts
NO_WAIT = {"prefill_tokens_per_second": 1e12, "read_tokens_per_second": 1e12}


def raw(client: anthropic.Anthropic, messages: Any, **kwargs: Any) -> Any:
    """The response with its headers; `.parse()` gives the message."""
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 200, **kwargs}
    return client.messages.with_raw_response.create(messages=messages, **params)


def ask(client: anthropic.Anthropic, messages: Any, **kwargs: Any) -> Any:
    return raw(client, messages, **kwargs).parse()


def sized(client: anthropic.Anthropic, tokens: int, *, cache: bool = False, seed: int = 0) -> Any:
    """A one-block request of exactly `tokens` prompt tokens."""
    overhead = (
        client.messages.count_tokens(model=MODEL, messages=user(text_block(words(1)))).input_tokens
        - 1
    )
    return user(text_block(words(tokens - overhead, seed=seed), cache=cache))


def error_of(refused: pytest.ExceptionInfo[anthropic.APIStatusError]) -> dict[str, Any]:
    body: dict[str, Any] = refused.value.body  # type: ignore[assignment]
    assert body["type"] == "error"
    error: dict[str, Any] = body["error"]
    return error


def last(emulator: Control, status: int = 200) -> dict[str, Any]:
    entries = [e for e in emulator.log() if e["status"] == status]
    return entries[-1]


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(math.ceil(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def until(condition: Callable[[], bool], what: str) -> None:
    """A bounded poll for something another thread does."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def frozen(emulator: Control) -> Control:
    emulator.freeze(T0)
    return emulator


# --- the default --------------------------------------------------------------------------


def test_by_default_there_are_no_limits_no_headers_and_no_latency(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    response = raw(client, user(text_block(words(50))))
    assert not [h for h in response.headers if h.startswith("anthropic-ratelimit-")]
    assert emulator.post("limits")["tier"] is None
    assert emulator.http.get("/_emulator/latency").json() == {"mode": "none"}
    assert "limits" not in last(emulator)
    assert "latency" not in last(emulator)


# --- what counts ----------------------------------------------------------------------------


def test_input_tokens_and_cache_writes_count_toward_itpm_but_cache_reads_do_not(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(itpm=10_000)
    messages = [*sized(client, 1500, cache=True), {"role": "assistant", "content": "Noted."}]
    messages.append({"role": "user", "content": "What is here?"})

    written = ask(client, messages)
    entry = last(frozen)
    assert written.usage.cache_creation_input_tokens > 0
    spent = entry["limits"]["before"]["input_tokens"] - entry["limits"]["after"]["input_tokens"]
    assert spent == written.usage.input_tokens + written.usage.cache_creation_input_tokens

    read = ask(client, messages)
    entry = last(frozen)
    assert read.usage.cache_read_input_tokens == written.usage.cache_creation_input_tokens
    spent = entry["limits"]["before"]["input_tokens"] - entry["limits"]["after"]["input_tokens"]
    assert spent == read.usage.input_tokens  # the 1,500 tokens read cost nothing here


def test_cache_reads_count_for_a_model_marked_as_an_exception(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(itpm=10_000, models={MODEL: {"cache_reads_count": True}})
    messages = sized(client, 1500, cache=True)
    ask(client, messages)
    read = ask(client, messages)
    entry = last(frozen)
    assert read.usage.cache_read_input_tokens > 0
    spent = entry["limits"]["before"]["input_tokens"] - entry["limits"]["after"]["input_tokens"]
    assert spent == total(read.usage)


def test_output_tokens_are_reserved_from_max_tokens_then_corrected_when_the_response_ends(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(otpm=10_000)
    response = raw(client, user(text_block("What is a river?")), max_tokens=4000)
    message = response.parse()
    assert response.headers["anthropic-ratelimit-output-tokens-remaining"] == "6000"
    levels = last(frozen)["limits"]
    assert levels["after"]["output_tokens"] == 6000
    assert levels["settled"]["output_tokens"] == 10_000 - message.usage.output_tokens

    with client.messages.stream(
        model=MODEL, max_tokens=2000, messages=user(text_block("And a stone?"))
    ) as stream:
        assert stream.response.headers["anthropic-ratelimit-output-tokens-limit"] == "10000"
        streamed = stream.get_final_message()
    levels = last(frozen)["limits"]
    assert levels["before"]["output_tokens"] == 10_000 - message.usage.output_tokens
    assert levels["settled"]["output_tokens"] == (
        levels["before"]["output_tokens"] - streamed.usage.output_tokens
    )


def test_max_tokens_above_the_output_limit_never_passes(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(otpm=8_000)
    with pytest.raises(anthropic.RateLimitError, match="8,000 output tokens per minute"):
        ask(client, user(text_block("Hello?")), max_tokens=9_000)


# --- refusals ----------------------------------------------------------------------------------


def test_a_request_whose_uncached_input_exceeds_the_itpm_capacity_can_never_pass(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(tier=1)  # Sonnet 4.x: 30,000 input tokens per minute
    messages = sized(client, 31_000, cache=True)
    with pytest.raises(anthropic.RateLimitError) as refused:
        ask(client, messages)
    error = refused.value
    assert error.status_code == 429
    assert error_of(refused)["type"] == "rate_limit_error"
    message = error_of(refused)["message"]
    assert message.startswith(
        "This request would exceed your organization's rate limit of 30,000 input tokens per "
        f"minute (org: {last(frozen, 429)['workspace']}, model: {MODEL})."
    )
    assert "can never pass" in message
    assert "Please reduce the prompt length or the maximum tokens requested" in message
    assert "retry-after" not in error.response.headers
    assert error.response.headers["x-should-retry"] == "false"
    frozen.advance(3600)
    with pytest.raises(anthropic.RateLimitError, match="can never pass"):
        ask(client, messages)
    assert frozen.cache() == []  # a refused request writes nothing


def test_retry_after_is_honest_a_retry_after_that_wait_passes_and_not_a_second_before(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(itpm=6_000)  # 100 tokens a second
    ask(client, sized(client, 4_000))  # 2,000 left
    with pytest.raises(anthropic.RateLimitError) as refused:
        ask(client, sized(client, 4_000, seed=1))
    assert refused.value.response.headers["retry-after"] == "20"
    message = error_of(refused)["message"]
    assert "6,000 input tokens per minute" in message
    assert "try again later" in message
    assert last(frozen, 429)["limits"]["retry_after"] == 20

    frozen.advance(19)
    with pytest.raises(anthropic.RateLimitError):
        ask(client, sized(client, 4_000, seed=1))
    frozen.advance(1)  # 20 seconds after the refusal that said 20
    assert ask(client, sized(client, 4_000, seed=1)).usage.input_tokens == 4_000


def test_the_sdks_own_retry_waits_retry_after_and_then_passes(
    running_emulator: RunningEmulator, client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(itpm=6_000)
    ask(client, sized(client, 5_995))  # 5 tokens left; 100 more a second
    small = sized(client, 100, seed=2)  # needs 0.95 s: retry-after 1
    frozen.post("clock", {"frozen": False})
    with anthropic.Anthropic(
        base_url=running_emulator.base_url, api_key="test-key", max_retries=2
    ) as retrying:
        message = retrying.messages.create(model=MODEL, max_tokens=10, messages=small)
    assert message.usage.input_tokens == 100
    refused, passed = [e for e in frozen.log() if e.get("path") == "/v1/messages"][-2:]
    assert (refused["status"], refused["limits"]["retry_after"], passed["status"]) == (429, 1, 200)
    # The SDK's own backoff would retry after at most 0.5 s here, and be refused again.
    assert passed["time"] - refused["time"] >= 1.0


# --- headers -----------------------------------------------------------------------------------


def test_the_headers_give_limit_remaining_and_an_rfc_3339_reset_for_each_bucket(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(rpm=50, itpm=30_000, otpm=8_000)
    response = raw(client, sized(client, 3_000), max_tokens=1_000)
    headers = response.headers
    assert (
        headers["anthropic-ratelimit-requests-limit"],
        headers["anthropic-ratelimit-requests-remaining"],
        headers["anthropic-ratelimit-requests-reset"],
    ) == ("50", "49", rfc3339(T0 + 1.2))  # one request back in 60/50 s
    assert (
        headers["anthropic-ratelimit-input-tokens-limit"],
        headers["anthropic-ratelimit-input-tokens-remaining"],
        headers["anthropic-ratelimit-input-tokens-reset"],
    ) == ("30000", "27000", rfc3339(T0 + 6))  # 3,000 tokens at 500 a second
    assert (
        headers["anthropic-ratelimit-output-tokens-limit"],
        headers["anthropic-ratelimit-output-tokens-remaining"],
        headers["anthropic-ratelimit-output-tokens-reset"],
    ) == ("8000", "7000", rfc3339(T0 + 7.5))
    # The tokens-* headers show the most restrictive of the two token buckets.
    assert headers["anthropic-ratelimit-tokens-limit"] == "8000"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "7000"
    assert datetime.strptime(
        headers["anthropic-ratelimit-tokens-reset"], "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=UTC).timestamp() == math.ceil(T0 + 7.5)


def test_token_figures_in_the_headers_are_rounded_to_the_nearest_thousand(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(itpm=30_000)
    headers = raw(client, sized(client, 2_600)).headers
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "27000"  # 27,400


def test_a_refusal_carries_the_headers_too(client: anthropic.Anthropic, frozen: Control) -> None:
    frozen.limits(rpm=1)
    ask(client, user(text_block("One?")))
    with pytest.raises(anthropic.RateLimitError, match="1 requests per minute") as refused:
        ask(client, user(text_block("Two?")))
    headers = refused.value.response.headers
    assert headers["retry-after"] == "60"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"] == rfc3339(T0 + 60)


# --- buckets --------------------------------------------------------------------------------------


def test_count_tokens_is_limited_on_its_own(client: anthropic.Anthropic, frozen: Control) -> None:
    frozen.limits(rpm=1, count_tokens_rpm=2)
    messages = user(text_block("Count me."))
    ask(client, messages)  # the messages bucket is now empty
    counted = client.messages.with_raw_response.count_tokens(model=MODEL, messages=messages)
    assert counted.headers["anthropic-ratelimit-requests-remaining"] == "1"
    client.messages.count_tokens(model=MODEL, messages=messages)
    with pytest.raises(anthropic.RateLimitError, match="2 token counting requests per minute"):
        client.messages.count_tokens(model=MODEL, messages=messages)
    with pytest.raises(anthropic.RateLimitError, match="1 requests per minute"):
        ask(client, messages)


def test_buckets_are_kept_per_api_key_and_per_model_class(
    running_emulator: RunningEmulator, client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(rpm=1)
    messages = user(text_block("Which bucket?"))
    ask(client, messages)
    with pytest.raises(anthropic.RateLimitError):
        ask(client, messages)
    with pytest.raises(anthropic.RateLimitError):  # Sonnet 4.5 shares Sonnet 4.6's buckets
        ask(client, messages, model="claude-sonnet-4-5")
    ask(client, messages, model="claude-haiku-4-5")  # another class, its own buckets
    with anthropic.Anthropic(
        base_url=running_emulator.base_url, api_key="another-key", max_retries=0
    ) as other:
        other.messages.create(model=MODEL, max_tokens=10, messages=messages)
    buckets = frozen.http.get("/_emulator/limits").json()["buckets"]
    assert len(buckets) == 2
    assert {c for classes in buckets.values() for c in classes} == {"sonnet-4", "haiku-4-5"}


def test_buckets_refill_continuously_on_the_virtual_clock(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.limits(itpm=6_000)
    ask(client, sized(client, 6_000))
    frozen.advance(15)  # a quarter of a minute: 1,500 tokens back
    assert frozen.http.get("/_emulator/limits").json()["buckets"]
    headers = raw(client, sized(client, 1_500, seed=3)).headers
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "0"


def test_a_time_scaled_emulator_refills_its_buckets_as_much_faster_as_it_answers(
    client: anthropic.Anthropic, frozen: Control
) -> None:
    frozen.latency(
        mode="realistic", time_scale=60, base_seconds=0, output_tokens_per_second=1e12, **NO_WAIT
    )  # a minute in a second, and answers at once on the frozen clock
    frozen.limits(itpm=6_000)  # 100 tokens a second, 6,000 a scaled second
    assert frozen.http.get("/_emulator/limits").json()["time_scale"] == 60
    ask(client, sized(client, 4_000))  # 2,000 left
    with pytest.raises(anthropic.RateLimitError) as refused:
        ask(client, sized(client, 4_000, seed=1))
    assert refused.value.response.headers["retry-after"] == "1"  # 20 s of the API's, scaled
    frozen.advance(0.3)  # 18 s of the API's: 1,800 tokens back, 200 short
    with pytest.raises(anthropic.RateLimitError):
        ask(client, sized(client, 4_000, seed=1))
    frozen.advance(0.04)  # past the 20 s the bucket needed, divided by 60
    assert ask(client, sized(client, 4_000, seed=1)).usage.input_tokens == 4_000
    frozen.latency(mode="none")  # back to real time: the bucket refills at its own rate
    frozen.advance(1)
    with pytest.raises(anthropic.RateLimitError):
        ask(client, sized(client, 4_000, seed=2))


# --- controls -----------------------------------------------------------------------------------


def test_a_tier_of_the_table_sets_every_class_and_reset_returns_to_no_limits(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    shown = emulator.limits(tier=2, models={"claude-haiku-4-5": {"itpm": 123_000}})
    assert shown["tier"] == "2"
    assert shown["count_tokens_rpm"] == 2_000
    sonnet = shown["models"]["sonnet-4"]
    assert (sonnet["rpm"], sonnet["itpm"], sonnet["otpm"]) == (1_000, 450_000, 90_000)
    assert sonnet["models"] == ["claude-sonnet-4-6", "claude-sonnet-4-5"]
    assert shown["models"]["haiku-4-5"]["itpm"] == 123_000
    assert emulator.http.get("/_emulator/limits").json()["models"] == shown["models"]
    emulator.post("reset")
    assert emulator.http.get("/_emulator/limits").json()["tier"] is None
    assert "anthropic-ratelimit-requests-limit" not in raw(client, user(text_block("Hi"))).headers


@pytest.mark.parametrize(
    "body",
    [{"tier": 9}, {"rpm": 0}, {"itpm": "many"}, {"models": {"claude-nope": {"rpm": 1}}},
     {"burst": 3}],
)  # fmt: skip
def test_limits_the_emulator_cannot_apply_are_refused(emulator: Control, body: Any) -> None:
    response = emulator.http.post("/_emulator/limits", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- latency ------------------------------------------------------------------------------------


@pytest.fixture
def background() -> Iterator[Callable[[Callable[[], Any]], dict[str, Any]]]:
    """Run calls in threads; results land in the returned dict under "value"."""
    threads: list[threading.Thread] = []

    def start(call: Callable[[], Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.setdefault("value", call()), daemon=True)
        result["thread"] = thread
        threads.append(thread)
        thread.start()
        return result

    yield start
    for thread in threads:
        thread.join(timeout=10)


def test_time_to_first_token_grows_with_the_uncached_prompt_and_a_read_is_faster(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    figures = emulator.latency(mode="realistic", time_scale=1000)  # milliseconds, for speed
    messages = sized(client, 3_000, cache=True)
    written = ask(client, messages)
    write_latency = last(emulator)["latency"]
    read = ask(client, messages)
    read_latency = last(emulator)["latency"]

    def expected(uncached: int, cached: int) -> float:
        seconds = figures["base_seconds"] + uncached / figures["prefill_tokens_per_second"]
        return (seconds + cached / figures["read_tokens_per_second"]) / 1000

    uncached = written.usage.input_tokens + written.usage.cache_creation_input_tokens
    assert write_latency["first_token"] == pytest.approx(expected(uncached, 0), abs=1e-6)
    assert read_latency["first_token"] == pytest.approx(
        expected(read.usage.input_tokens, read.usage.cache_read_input_tokens), abs=1e-6
    )
    assert read_latency["first_token"] < write_latency["first_token"]
    assert write_latency["output"] == pytest.approx(
        written.usage.output_tokens / figures["output_tokens_per_second"] / 1000, abs=1e-6
    )


def test_two_cold_requests_a_second_apart_both_write_when_the_first_token_takes_5_seconds(
    client: anthropic.Anthropic,
    frozen: Control,
    background: Callable[[Callable[[], Any]], dict[str, Any]],
) -> None:
    frozen.latency(mode="realistic", base_seconds=5, output_tokens_per_second=1e9, **NO_WAIT)
    messages = sized(client, 2_000, cache=True)

    first = background(lambda: ask(client, messages))
    until(lambda: bool(frozen.cache()), "the first request's pending entry")
    frozen.advance(1)
    second = background(lambda: ask(client, messages))
    until(lambda: frozen.cache()[0]["writers"] == 2, "the second request")
    frozen.advance(4)  # the first response begins
    first["thread"].join(timeout=10)
    assert frozen.cache()[0]["readable"] is True
    assert second["thread"].is_alive()  # its first token is a second away still
    frozen.advance(1)
    second["thread"].join(timeout=10)

    for result in (first, second):
        assert result["value"].usage.cache_creation_input_tokens > 0
        assert result["value"].usage.cache_read_input_tokens == 0
    assert [e["latency"]["first_token"] for e in frozen.log() if "latency" in e] == [5.0, 5.0]
    frozen.latency(mode="none")
    assert ask(client, messages).usage.cache_read_input_tokens > 0


def test_a_json_response_makes_its_entries_readable_at_the_first_token_not_at_its_end(
    client: anthropic.Anthropic,
    frozen: Control,
    background: Callable[[Callable[[], Any]], dict[str, Any]],
) -> None:
    frozen.latency(mode="realistic", base_seconds=2, output_tokens_per_second=1, **NO_WAIT)
    writer = background(lambda: ask(client, sized(client, 2_000, cache=True)))
    until(lambda: bool(frozen.cache()), "the pending entry")
    frozen.advance(2)
    until(lambda: frozen.cache()[0]["readable"], "the first token")
    assert writer["thread"].is_alive()  # the answer is still being written
    frozen.advance(3600)
    writer["thread"].join(timeout=10)
    assert writer["value"].usage.cache_creation_input_tokens > 0


def test_a_stream_starts_after_its_first_token_and_paces_its_output_on_the_clock(
    client: anthropic.Anthropic,
    frozen: Control,
    background: Callable[[Callable[[], Any]], dict[str, Any]],
) -> None:
    frozen.latency(mode="realistic", base_seconds=3, output_tokens_per_second=10, **NO_WAIT)
    seen: list[str] = []

    def stream() -> Any:
        with client.messages.stream(
            model=MODEL, max_tokens=200, messages=sized(client, 1_500, cache=True)
        ) as events:
            for event in events:
                seen.append(event.type)
            return events.get_final_message()

    result = background(stream)
    until(lambda: bool(frozen.cache()), "the request")
    assert seen == []
    frozen.advance(3)
    until(lambda: "message_start" in seen, "message_start")
    assert "message_stop" not in seen  # dozens of output tokens at 10 a second
    frozen.advance(3600)
    result["thread"].join(timeout=10)
    assert seen[-1] == "message_stop"
    entry = last(frozen)
    assert entry["latency"]["output"] == result["value"].usage.output_tokens / 10
