"""The emulator's deterministic tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.emulator.tokenizer import count_text

PROSE = (
    "People who use Claude Desktop or Claude Code keep folders of material they ask about "
    "again and again: a team handbook, a spec, legal documents, a codebase, a docs site. "
    "Sending that folder on every question is slow and costs full input price each time."
)


def test_english_prose_is_about_four_characters_a_token() -> None:
    assert 3.6 <= len(PROSE) / count_text(PROSE, "classic") <= 4.4


def test_the_dense_family_counts_30_percent_more() -> None:
    text = PROSE * 10
    assert count_text(text, "dense") / count_text(text, "classic") == pytest.approx(1.3, abs=0.01)


@given(st.text())
def test_counts_are_deterministic_and_never_negative(text: str) -> None:
    assert count_text(text, "classic") == count_text(text, "classic") >= 0
    assert count_text(text, "dense") >= count_text(text, "classic")


@given(st.text(min_size=1).filter(lambda t: not t.isspace()))
def test_any_visible_text_costs_at_least_one_token(text: str) -> None:
    assert count_text(text, "classic") >= 1


@given(st.lists(st.from_regex(r"[a-z]{1,12}", fullmatch=True), min_size=1, max_size=50))
def test_words_separated_by_spaces_add_up(words: list[str]) -> None:
    joined = " ".join(words)
    assert count_text(joined, "classic") == sum(count_text(w, "classic") for w in words)
