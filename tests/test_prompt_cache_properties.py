"""Properties of the emulator's cache accounting, on the pure core (no HTTP)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.emulator.positions import Prompt
from corpus_cache.emulator.prompt import parse_messages_request
from corpus_cache.emulator.prompt_cache import PromptCache
from corpus_cache.models.catalog import load_catalog
from support.prompts import words

CATALOG = load_catalog()
NOW = 1_800_000_000.0


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A user message of 1-30 text blocks with up to 4 breakpoints, 1h ones first."""
    sizes = draw(st.lists(st.integers(1, 400), min_size=1, max_size=30))
    marked = draw(st.lists(st.integers(0, len(sizes) - 1), max_size=4, unique=True).map(sorted))
    one_hour = draw(st.integers(0, len(marked)))
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": words(size, seed=i)} for i, size in enumerate(sizes)
    ]
    for rank, index in enumerate(marked):
        ttl = "1h" if rank < one_hour else "5m"
        blocks[index]["cache_control"] = {"type": "ephemeral", "ttl": ttl}
    return {
        "model": draw(st.sampled_from(["claude-sonnet-4-6", "claude-opus-5-5", "claude-opus-4-7"])),
        "max_tokens": 100,
        "messages": [{"role": "user", "content": blocks}],
    }


def parse(body: dict[str, Any]) -> Prompt:
    return parse_messages_request(body, CATALOG).prompt


def last_cacheable_prefix(prompt: Prompt) -> int:
    minimum = prompt.model.min_cacheable_tokens
    eligible = [
        prompt.positions[b].cumulative_tokens
        for b in prompt.breakpoints
        if prompt.positions[b].cumulative_tokens >= minimum
    ]
    return max(eligible, default=0)


@given(requests())
def test_input_read_and_creation_add_up_to_the_prompt(body: dict[str, Any]) -> None:
    prompt = parse(body)
    cache = PromptCache()
    for _ in range(2):
        outcome = cache.account("ws", prompt, NOW)
        cache.begin("ws", outcome)
        assert outcome.input_tokens + outcome.read_tokens + outcome.creation_tokens == (
            prompt.total_tokens
        )
        assert outcome.input_tokens >= 0


@given(requests())
def test_a_cold_request_writes_exactly_up_to_its_last_cacheable_breakpoint(
    body: dict[str, Any],
) -> None:
    prompt = parse(body)
    outcome = PromptCache().account("ws", prompt, NOW)
    assert outcome.read_tokens == 0
    assert outcome.creation_tokens == last_cacheable_prefix(prompt)


@given(requests())
def test_a_repeat_reads_everything_the_first_wrote_and_writes_nothing(
    body: dict[str, Any],
) -> None:
    prompt = parse(body)
    cache = PromptCache()
    cache.begin("ws", cache.account("ws", prompt, NOW))
    repeat = cache.account("ws", prompt, NOW + 1)
    assert repeat.read_tokens == last_cacheable_prefix(prompt)
    assert repeat.creation_tokens == 0


@given(requests())
def test_a_repeat_before_the_first_response_begins_pays_again(body: dict[str, Any]) -> None:
    prompt = parse(body)
    cache = PromptCache()
    first = cache.account("ws", prompt, NOW)
    second = cache.account("ws", prompt, NOW)
    assert second.read_tokens == 0
    assert second.creation_tokens == first.creation_tokens


@given(requests(), st.data())
def test_an_edit_never_lets_a_read_reach_past_the_edited_block(
    body: dict[str, Any], data: st.DataObject
) -> None:
    prompt = parse(body)
    cache = PromptCache()
    cache.begin("ws", cache.account("ws", prompt, NOW))
    blocks = body["messages"][0]["content"]
    edited = data.draw(st.integers(0, len(blocks) - 1))
    changed = [dict(b) for b in blocks]
    changed[edited]["text"] = changed[edited]["text"] + " changed"
    after = parse({**body, "messages": [{"role": "user", "content": changed}]})
    outcome = cache.account("ws", after, NOW + 1)
    before_edit = prompt.positions[edited - 1].cumulative_tokens if edited else 0
    assert outcome.read_tokens <= before_edit


@settings(max_examples=50)
@given(requests(), st.integers(0, 7200))
def test_nothing_is_read_after_every_ttl_has_run_out(body: dict[str, Any], extra: int) -> None:
    prompt = parse(body)
    cache = PromptCache()
    cache.begin("ws", cache.account("ws", prompt, NOW))
    later = cache.account("ws", prompt, NOW + 3600 + extra)
    assert later.read_tokens == 0
