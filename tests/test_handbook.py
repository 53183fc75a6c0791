"""The sample corpus: what it promises, and how well search and answers find its facts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.cli.demo import QUESTIONS
from corpus_cache.engine.core import Engine
from support.emulator_control import Control
from support.engines import engine_on

ROOT = Path(__file__).parent.parent / "corpora"
FACTS: list[dict[str, str]] = json.loads((ROOT / "handbook.facts.json").read_text())

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(running_emulator: Any, emulator: Control, tmp_path: Path) -> AsyncIterator[Engine]:
    async with engine_on(
        ROOT / "handbook", running_emulator.base_url, tmp_path, model="claude-sonnet-4-6"
    ) as engine:
        yield engine


def test_every_fact_is_written_verbatim_in_its_document() -> None:
    assert len(FACTS) >= 25
    for fact in FACTS:
        assert fact["answer"] in (ROOT / "handbook" / fact["path"]).read_text(), fact


async def test_the_handbook_has_at_least_20_documents_and_30k_tokens(engine: Engine) -> None:
    corpus = engine.current
    assert len(corpus.snapshot.documents) >= 20
    assert corpus.corpus_tokens >= 30_000  # classic tokenizer: the smaller count
    assert not corpus.snapshot.skipped


async def test_search_ranks_the_facts_document_first(engine: Engine) -> None:
    found = sum(engine.search(f["question"], 1)[0].passage.path == f["path"] for f in FACTS)
    assert found / len(FACTS) >= 0.95


async def test_emulated_answers_quote_the_fact(engine: Engine) -> None:
    quoted = 0
    for fact in FACTS:
        answer = await engine.ask(fact["question"])
        quoted += any(fact["answer"] in c.quote for c in answer.citations)
    assert quoted / len(FACTS) >= 0.9


async def test_the_demo_questions_are_answered_by_their_first_citation(engine: Engine) -> None:
    for question in QUESTIONS:
        (fact,) = [f for f in FACTS if f["question"] == question]
        answer = await engine.ask(question)
        assert fact["answer"] in answer.citations[0].quote
        assert answer.citations[0].path == fact["path"]
