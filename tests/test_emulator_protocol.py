"""The emulator speaks the Messages API: auth, errors, streaming, models, answers, controls."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anthropic
import httpx2
import pytest

from corpus_cache.emulator.answer import PREAMBLE
from support.emulator_control import Control
from support.prompts import MODEL, document, text_block, total, user, words

HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}

HANDBOOK = (
    "Deploys happen every weekday at 14:00 UTC. "
    "The on-call engineer rotates every Monday at 10:00 and carries the pager for a week. "
    "Incident reviews are written within two working days and shared with the whole team."
)
ARCHITECTURE = (
    "The billing service stores invoices in Postgres. "
    "Search runs on a nightly index rebuilt at 02:00. "
    "All services log to stderr in JSON."
)


def raw_post(
    base_url: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.post(
        base_url + path,
        content=content,
        headers={**HEADERS, "content-type": "application/json", **(headers or {})},
        timeout=30,
    )


# --- authentication and errors --------------------------------------------------------


def test_a_request_without_a_key_is_refused_with_authentication_error(
    running_emulator: Any, emulator: Control
) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": user(text_block("Hi"))}
    response = raw_post(running_emulator.base_url, "/v1/messages", body, {"x-api-key": ""})
    assert response.status_code == 401
    assert response.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "x-api-key header is required"},
    }


def test_a_bearer_token_is_accepted(running_emulator: Any, emulator: Control) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": user(text_block("Hi"))}
    headers = {"x-api-key": "", "authorization": "Bearer some-token"}
    assert raw_post(running_emulator.base_url, "/v1/messages", body, headers).status_code == 200


def test_a_malformed_body_is_a_400(running_emulator: Any, emulator: Control) -> None:
    response = raw_post(running_emulator.base_url, "/v1/messages", b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_max_tokens_is_required(running_emulator: Any, emulator: Control) -> None:
    body = {"model": MODEL, "messages": user(text_block("Hi"))}
    response = raw_post(running_emulator.base_url, "/v1/messages", body)
    assert response.status_code == 400
    assert "max_tokens" in response.json()["error"]["message"]


def test_an_unknown_model_is_a_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="claude-nonexistent-9", max_tokens=10, messages=user(text_block("Hi"))
        )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model: claude-nonexistent-9"},
    }


def test_a_body_over_32_mb_is_a_413(running_emulator: Any, emulator: Control) -> None:
    big = "x" * (32 * 1024 * 1024 + 10)
    body = {"model": MODEL, "max_tokens": 10, "messages": user(text_block(big))}
    response = raw_post(running_emulator.base_url, "/v1/messages", body)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_an_unexpected_field_is_rejected(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="Extra inputs"):
        client.messages.create(
            model=MODEL, max_tokens=10, messages=user(text_block("Hi")), extra_body={"colour": 1}
        )


def test_a_prompt_over_the_context_window_is_rejected(client: anthropic.Anthropic) -> None:
    # Haiku 4.5 has a 200k window; ~210k one-token words overflow it.
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        client.messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=user(text_block(words(210_000)))
        )


def test_max_tokens_above_the_models_limit_is_rejected(
    running_emulator: Any, emulator: Control
) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 64_001, "messages": user(text_block("Hi"))}
    response = raw_post(running_emulator.base_url, "/v1/messages", body)
    assert response.status_code == 400
    assert "maximum allowed" in response.json()["error"]["message"]


def test_missing_anthropic_version_is_rejected(running_emulator: Any, emulator: Control) -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": user(text_block("Hi"))}
    response = raw_post(running_emulator.base_url, "/v1/messages", body, {"anthropic-version": ""})
    assert response.status_code == 400
    assert "anthropic-version" in response.json()["error"]["message"]


# --- answers and citations ------------------------------------------------------------


def test_answers_quote_the_best_matching_sentences_with_exact_citations(
    client: anthropic.Anthropic,
) -> None:
    documents = [document(HANDBOOK, "handbook.md"), document(ARCHITECTURE, "architecture.md")]
    response = client.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=user(*documents, text_block("When does the on-call engineer rotate?")),
    )
    assert response.content[0].type == "text"
    assert response.content[0].text.startswith(PREAMBLE)
    cited = [c for block in response.content if block.type == "text" for c in block.citations or []]
    assert cited, "the answer should cite a passage"
    best = cited[0]
    assert best.type == "char_location"
    assert best.document_title == "handbook.md"
    assert "on-call engineer rotates every Monday" in best.cited_text
    sources = [HANDBOOK, ARCHITECTURE]
    for citation in cited:
        assert citation.type == "char_location"
        data = sources[citation.document_index]
        assert data[citation.start_char_index : citation.end_char_index] == citation.cited_text


def test_answers_are_deterministic(client: anthropic.Anthropic) -> None:
    messages = user(document(HANDBOOK, "handbook.md"), text_block("How are incidents reviewed?"))
    first = client.messages.create(model=MODEL, max_tokens=300, messages=messages)
    second = client.messages.create(model=MODEL, max_tokens=300, messages=messages)
    assert first.content == second.content


def test_an_unmatched_question_says_so_plainly(client: anthropic.Anthropic) -> None:
    messages = user(document(HANDBOOK, "handbook.md"), text_block("Xylophone quasar?"))
    response = client.messages.create(model=MODEL, max_tokens=300, messages=messages)
    assert "offline emulator" in response.content[0].text
    assert "No passage" in response.content[0].text


def test_citations_on_some_documents_but_not_all_are_rejected(client: anthropic.Anthropic) -> None:
    documents = [
        document(HANDBOOK, "handbook.md", citations=True),
        document(ARCHITECTURE, "architecture.md", citations=False),
    ]
    with pytest.raises(anthropic.BadRequestError, match="citations"):
        client.messages.create(
            model=MODEL, max_tokens=100, messages=user(*documents, text_block("Q?"))
        )


def test_an_answer_is_cut_at_max_tokens(client: anthropic.Anthropic) -> None:
    messages = user(document(HANDBOOK, "handbook.md"), text_block("When do deploys happen?"))
    response = client.messages.create(model=MODEL, max_tokens=5, messages=messages)
    assert response.stop_reason == "max_tokens"
    assert response.usage.output_tokens <= 5


# --- streaming ------------------------------------------------------------------------


def test_streaming_sends_events_in_the_real_order_with_cache_usage_first(
    running_emulator: Any, client: anthropic.Anthropic
) -> None:
    messages = user(
        document(words(1500) + ". " + HANDBOOK, "handbook.md", cache=True),
        text_block("When do deploys happen?"),
    )
    expected = client.messages.create(model=MODEL, max_tokens=300, messages=messages)
    body = {"model": MODEL, "max_tokens": 300, "messages": messages, "stream": True}
    response = raw_post(running_emulator.base_url, "/v1/messages", body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    kinds = [event["type"] for event in events]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert set(kinds[3:-2]) == {"content_block_delta", "content_block_start", "content_block_stop"}
    usage = events[0]["message"]["usage"]
    assert usage["cache_read_input_tokens"] == expected.usage.cache_creation_input_tokens > 0
    assert usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }
    assert "cache_creation" not in events[-2]["usage"]  # cumulative, without the split
    assert events[-2]["usage"]["output_tokens"] == expected.usage.output_tokens


def test_the_streamed_final_message_matches_the_json_one(client: anthropic.Anthropic) -> None:
    messages = user(
        document(words(1500) + ". " + HANDBOOK, "handbook.md", cache=True),
        text_block("Who carries the pager?"),
    )
    with client.messages.stream(model=MODEL, max_tokens=300, messages=messages) as stream:
        streamed = stream.get_final_message()
    plain = client.messages.create(model=MODEL, max_tokens=300, messages=messages)
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in plain.content]
    assert streamed.usage.cache_creation_input_tokens > 0
    assert plain.usage.cache_read_input_tokens == streamed.usage.cache_creation_input_tokens
    assert total(streamed.usage) == total(plain.usage)
    assert streamed.usage.output_tokens == plain.usage.output_tokens


# --- count_tokens and models ----------------------------------------------------------


def test_the_dense_tokenizer_counts_about_30_percent_more(client: anthropic.Anthropic) -> None:
    messages = user(text_block(HANDBOOK * 20))
    classic = client.messages.count_tokens(
        model="claude-sonnet-4-6", messages=messages
    ).input_tokens
    dense = client.messages.count_tokens(model="claude-opus-4-7", messages=messages).input_tokens
    assert 1.25 <= dense / classic <= 1.35


def test_models_are_listed_and_fetched(client: anthropic.Anthropic) -> None:
    listed = [model.id for model in client.models.list()]
    assert "claude-opus-5-5" in listed
    assert "claude-haiku-4-5" in listed
    info = client.models.retrieve("claude-haiku-4-5-20251001")
    assert info.id == "claude-haiku-4-5"
    assert info.max_input_tokens == 200_000
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-unknown")


# --- diagnostics ----------------------------------------------------------------------


def test_diagnostics_name_the_section_that_changed(client: anthropic.Anthropic) -> None:
    question = user(text_block(words(1500, seed=1), cache=True), text_block("Q?"))
    first = client.messages.create(
        model=MODEL, max_tokens=10, system=[text_block(words(1200), cache=True)], messages=question
    )
    second = client.messages.create(
        model=MODEL,
        max_tokens=10,
        system=[text_block(words(1200, seed=4), cache=True)],
        messages=question,
        diagnostics={"previous_message_id": first.id},
    )
    assert second.diagnostics is not None
    reason = second.diagnostics.cache_miss_reason
    assert reason is not None
    assert reason.type == "system_changed"
    assert reason.cache_missed_input_tokens == total(first.usage) - first.usage.input_tokens


def test_diagnostics_are_null_when_the_prefix_was_reused(client: anthropic.Anthropic) -> None:
    messages = user(text_block(words(1500), cache=True), text_block("Q?"))
    first = client.messages.create(model=MODEL, max_tokens=10, messages=messages)
    second = client.messages.create(
        model=MODEL, max_tokens=10, messages=messages, diagnostics={"previous_message_id": first.id}
    )
    assert second.diagnostics is None


def test_diagnostics_report_an_unknown_previous_message(client: anthropic.Anthropic) -> None:
    response = client.messages.create(
        model=MODEL,
        max_tokens=10,
        messages=user(text_block("Hi")),
        diagnostics={"previous_message_id": "msg_never_sent"},
    )
    assert response.diagnostics is not None
    assert response.diagnostics.cache_miss_reason is not None
    assert response.diagnostics.cache_miss_reason.type == "previous_message_not_found"


# --- faults and controls --------------------------------------------------------------


def test_the_sdk_retries_an_injected_529_and_then_succeeds(
    running_emulator: Any, emulator: Control
) -> None:
    emulator.fault(count=1, status=529, error_type="overloaded_error", retry_after=0.01)
    with anthropic.Anthropic(base_url=running_emulator.base_url, api_key="k", max_retries=2) as sdk:
        response = sdk.messages.create(model=MODEL, max_tokens=10, messages=user(text_block("Hi")))
    assert response.content
    statuses = [entry["status"] for entry in emulator.log()]
    assert statuses == [529, 200]


def test_an_injected_429_carries_retry_after(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.fault(status=429, error_type="rate_limit_error", retry_after=7)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=user(text_block("Hi")))
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_a_malformed_response_surfaces_as_an_sdk_error(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.fault(kind="malformed")
    with pytest.raises((json.JSONDecodeError, anthropic.APIResponseValidationError)):
        client.messages.create(model=MODEL, max_tokens=10, messages=user(text_block("Hi")))


def test_a_slow_response_times_out_in_the_sdk(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.fault(kind="delay", delay=2)
    with pytest.raises(anthropic.APITimeoutError):
        client.with_options(timeout=0.3).messages.create(
            model=MODEL, max_tokens=10, messages=user(text_block("Hi"))
        )


def test_the_log_keeps_accounting_and_recent_bodies(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    response = client.messages.create(model=MODEL, max_tokens=10, messages=user(text_block("Hi")))
    (entry,) = emulator.log(bodies=True)
    assert entry["id"] == response.id
    assert entry["usage"]["input_tokens"] == response.usage.input_tokens
    assert entry["body"]["messages"][0]["content"][0]["text"] == "Hi"


def billed_usd(usage: Any, output_tokens: int) -> float:
    """sonnet-4-6's list prices ($3 input, $15 output per million), a 5-minute write 1.25x."""
    written = usage.cache_creation_input_tokens or 0
    return (
        usage.input_tokens * 3 + written * 3.75 + (usage.cache_read_input_tokens or 0) * 0.3
        + output_tokens * 15
    ) * 1e-6  # fmt: skip


def test_the_log_says_a_finished_response_was_billed_in_full(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    prompt = user(document(words(1500), "a.txt", cache=True), text_block("When are deploys?"))
    with client.messages.stream(model=MODEL, max_tokens=100, messages=prompt) as stream:
        message = stream.get_final_message()
    (entry,) = emulator.log()
    assert entry["billed"]["usage"] == entry["usage"]
    assert entry["billed"]["usage"]["cache_creation_input_tokens"] > 0
    assert entry["billed"]["usd"] == pytest.approx(
        billed_usd(message.usage, message.usage.output_tokens)
    )


@pytest.mark.parametrize("ending", ["end", "drop", "error"])
def test_the_log_says_a_stream_the_emulator_cut_was_billed_what_it_had_reported(
    client: anthropic.Anthropic, emulator: Control, ending: str
) -> None:
    emulator.fault(kind="truncated", ending=ending)
    started = None
    # An "end" ending just stops; the others raise.
    with (
        contextlib.suppress(anthropic.APIError, httpx2.TransportError),
        client.messages.stream(model=MODEL, max_tokens=100, messages=user(text_block("Hi"))) as s,
    ):
        for event in s:
            if event.type == "message_start":
                started = event.message.usage
    assert started is not None
    (entry,) = emulator.log()
    assert entry["truncated"] == ending
    assert entry["billed"]["usage"]["output_tokens"] == started.output_tokens == 1
    assert entry["usage"]["output_tokens"] > 1  # what the whole answer would have been
    assert entry["billed"]["usd"] == pytest.approx(billed_usd(started, 1))


def test_a_refused_request_has_no_bill_in_the_log(
    client: anthropic.Anthropic, emulator: Control
) -> None:
    emulator.fault(status=529, error_type="overloaded_error")
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(model=MODEL, max_tokens=10, messages=user(text_block("Hi")))
    # The session's emulator: only this request's entry is looked at, whatever else
    # (a subprocess of an earlier test on its way out) reached it meanwhile.
    refused = [e for e in emulator.log() if e.get("status") == 529]
    assert len(refused) == 1, emulator.log()
    assert "billed" not in refused[0]


def test_the_clock_can_be_set_advanced_and_reset(emulator: Control) -> None:
    emulator.freeze(at=1_000.0)
    emulator.advance(60)
    assert emulator.http.get("/_emulator/clock").json() == {"now": 1_060.0, "frozen": True}
    emulator.post("reset")
    assert emulator.http.get("/_emulator/clock").json()["frozen"] is False
    refused = emulator.http.post("/_emulator/clock", json={"advance": -5})
    assert refused.status_code == 400
