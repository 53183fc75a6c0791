"""bench/questions.py: the held-out routing check asks in three kinds, not only headings."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from questions import KINDS, generate, in_half, normalized

DOCUMENT = """{title}
{rule}

An introduction of several plain words about {topic} and how the parts fit together.

Configuring the {topic} engine
------------------------------

The engine reads its settings once at startup and keeps them for the whole run.

Handling failed {topic} requests
--------------------------------

A request that fails is retried twice before the error reaches the caller's handler.
"""


def write_docs(root: Path, count: int) -> Path:
    for i in range(count):
        topic = f"topic{i}"
        title = f"Guide {i}"
        text = DOCUMENT.format(title=title, rule="=" * len(title), topic=topic)
        (root / f"guide{i}.rst").write_text(text)
    return root


def test_questions_come_in_three_kinds_in_about_equal_numbers(tmp_path: Path) -> None:
    asked = generate(write_docs(tmp_path, 12), 12, seed=3, per_document=2)
    kinds = Counter(q.kind for q in asked)
    assert set(kinds) == set(KINDS)
    assert max(kinds.values()) - min(kinds.values()) <= 1
    assert len(asked) == 24


def test_only_heading_questions_copy_a_heading(tmp_path: Path) -> None:
    folder = write_docs(tmp_path, 9)
    for q in generate(folder, 9, seed=5, per_document=2):
        text = (folder / q.path).read_text()
        headings = [
            line for line in text.splitlines()[1:] if line.startswith(("Configuring", "Handling"))
        ]
        copies = [h for h in headings if normalized(h) in normalized(q.text)]
        assert bool(copies) == (q.kind == "heading"), q


def test_the_halves_split_the_documents_and_a_half_asks_only_about_its_own(
    tmp_path: Path,
) -> None:
    folder = write_docs(tmp_path, 20)
    paths = [f"guide{i}.rst" for i in range(20)]
    tune = {p for p in paths if in_half(p, "tune")}
    test = {p for p in paths if in_half(p, "test")}
    assert tune
    assert test
    assert not tune & test
    assert tune | test == set(paths)
    assert {q.path for q in generate(folder, 20, seed=1, half="test")} <= test
