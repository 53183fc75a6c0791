"""The trace format and the cost runner that benchmarks share."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.corpus_fixture import write_corpus

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import cost
from traces import Event, generate, load, save

pytestmark = pytest.mark.anyio


def test_a_trace_round_trips_through_json_lines(tmp_path: Path) -> None:
    events = [
        Event(0.0, "ask", question="Q?"),
        Event(30.5, "edit", path="a.md", text="new\n"),
        Event(40.0, "create", path="b/c.md", text="x\n"),
        Event(50.0, "delete", path="a.md"),
    ]
    save(events, tmp_path / "t.jsonl")
    assert load(tmp_path / "t.jsonl") == events


def test_an_unknown_event_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"t": 0, "op": "dance"}\n')
    with pytest.raises(ValueError, match="unknown op"):
        load(tmp_path / "t.jsonl")


async def test_corpus_cache_beats_one_big_block_on_an_editing_session(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", filler_sentences=150)
    events = generate(corpus, "edit-heavy", questions=16, seed=1)
    report = await cost.compare(corpus, events, "claude-sonnet-5-5")
    usd = {name: s["usd"] for name, s in report["strategies"].items()}
    assert usd["lower_bound"] <= usd["corpus-cache"] < usd["single-block"] < usd["uncached"]
    assert report["edits"] == 8


async def test_two_instances_on_one_state_folder_cost_what_one_does_on_an_editing_session(
    tmp_path: Path,
) -> None:
    corpus = write_corpus(tmp_path / "corpus", filler_sentences=150)
    events = generate(corpus, "edit-heavy", questions=8, seed=1)
    report = await cost.compare(
        corpus, events, "claude-sonnet-5-5", instances=2, strategies=("corpus-cache",)
    )
    usd = {name: s["usd"] for name, s in report["strategies"].items()}
    assert usd[cost.TWO_INSTANCES] == pytest.approx(usd["corpus-cache"], rel=0.02)
    assert "two instances on one state folder" in cost.render(report)
