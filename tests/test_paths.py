"""Client-supplied paths never leave the corpus."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.corpus.paths import corpus_relative
from corpus_cache.errors import InvalidArgumentError


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "a/../../b",
        "/etc/passwd",
        "\\\\server\\share",
        "C:\\Windows",
        "~/x",
        "",
        " ",
        "a\x00b",
        "..",
        "./..",
        "a/..\\..\\b",
    ],
)
def test_paths_that_could_leave_the_corpus_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgumentError):
        corpus_relative(path)


def test_harmless_spellings_are_normalised() -> None:
    assert corpus_relative("./docs//guide.md") == "docs/guide.md"
    assert corpus_relative("docs\\guide.md") == "docs/guide.md"


@given(st.text())
def test_an_accepted_path_is_relative_and_has_no_parent_steps(path: str) -> None:
    try:
        relative = corpus_relative(path)
    except InvalidArgumentError:
        return
    assert not relative.startswith("/")
    assert ".." not in relative.split("/")
    assert "\x00" not in relative
