"""A cold start that does not count every file: local estimates calibrated on a few counts,
per model and backend, kept across restarts (api/tokens.py, api/estimate.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.tokens import EXACT_UP_TO, START_CALLS
from corpus_cache.cli.plan_report import plan_report, render_plan
from corpus_cache.emulator.tokenizer import count_text
from corpus_cache.plan.layout import safe_minimum
from support.corpus_fixture import write_folder
from support.emulator_control import Control
from support.engines import engine_on
from support.mcp_session import serving

pytestmark = pytest.mark.anyio


def count_calls(emulator: Control) -> int:
    return sum(1 for r in emulator.log() if r["path"] == "/v1/messages/count_tokens")


async def test_a_ten_thousand_file_folder_starts_with_at_most_25_count_tokens_calls(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "corpus", 10_000)
    async with engine_on(folder, running_emulator.base_url, tmp_path / "state") as engine:
        corpus = engine.current
        assert len(corpus.snapshot.documents) == 10_000
        assert count_calls(emulator) <= START_CALLS == 25
        assert len(corpus.estimated) >= 10_000 - START_CALLS
        for shard in corpus.shards:  # as planned, every breakpoint clears the minimum
            for block in shard.plan.blocks:
                if block.ttl is not None:
                    assert block.prefix_tokens >= safe_minimum(engine.model.min_cacheable_tokens)
        # The estimate is close to what the emulator's tokenizer counts, for the whole folder.
        texts = {d.path: d.text for d in corpus.snapshot.documents}
        some = sorted(corpus.estimated)[::500]
        for path in some:
            counted = count_text(texts[path], "dense") + count_text(path, "dense") + 7
            assert abs(corpus.estimated[path] - counted) <= corpus.estimate_error * counted + 2
            assert corpus.tokens[path] >= counted  # planned at the upper end of the bound


async def test_a_restart_reuses_the_calibration_and_counts_no_document(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "corpus", 300)
    state = tmp_path / "state"
    async with engine_on(folder, running_emulator.base_url, state) as first:
        estimated = dict(first.current.estimated)
        assert estimated
        assert count_calls(emulator) <= START_CALLS
    before = count_calls(emulator)
    async with engine_on(folder, running_emulator.base_url, state) as again:
        # The baseline and the system prompt only: no sample is counted again.
        assert count_calls(emulator) - before == 2
        assert again.current.estimated == estimated


async def test_another_model_calibrates_for_itself(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "corpus", 300)
    state = tmp_path / "state"
    async with engine_on(folder, running_emulator.base_url, state, model="claude-sonnet-5-5"):
        pass
    before = count_calls(emulator)
    async with engine_on(folder, running_emulator.base_url, state, model="claude-sonnet-4-5"):
        assert count_calls(emulator) - before > 2  # it sampled: nothing borrowed across models
    with sqlite3.connect(state / "ledger.sqlite3") as db:
        models = dict(
            db.execute(
                "SELECT model, COUNT(*) FROM token_counts WHERE kind IS NOT NULL GROUP BY model"
            ).fetchall()
        )
    assert set(models) == {"claude-sonnet-5-5", "claude-sonnet-4-5"}


async def test_a_calibration_another_backend_made_is_never_used(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "corpus", 300)
    state = tmp_path / "state"
    state.mkdir()
    # Samples from the real API (as the ledger would hold them after a run with a key),
    # ten times what the emulator counts: if borrowed, every estimate would be far off.
    ledger = Ledger(state / "ledger.sqlite3")
    ledger.store_token_counts(
        "claude-sonnet-5-5", "anthropic",
        {f"api-{n}": 10_000 for n in range(30)},
        {f"api-{n}": (kind, 500.0) for n, kind in enumerate(["prose", "code", "data", "cjk"] * 8)},
    )  # fmt: skip
    ledger.close()
    async with engine_on(folder, running_emulator.base_url, state) as engine:
        assert engine.counter.backend == "offline-emulator"
        assert count_calls(emulator) > 2  # it sampled for its own backend
        corpus = engine.current
        for doc in corpus.snapshot.documents[:50]:
            if doc.path in corpus.estimated:
                counted = count_text(doc.text, "dense") + count_text(doc.path, "dense") + 7
                assert corpus.estimated[doc.path] < 2 * counted


async def test_a_small_folder_and_a_few_new_files_are_counted_exactly(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "corpus", EXACT_UP_TO)
    async with engine_on(folder, running_emulator.base_url, tmp_path / "state") as engine:
        assert engine.current.estimated == {}
        assert count_calls(emulator) == EXACT_UP_TO + 2
        (folder / "new.md").write_text("A new note about the nightly depot audit.\n")
        corpus = await engine.refresh()
        assert corpus.estimated == {}
        assert count_calls(emulator) == EXACT_UP_TO + 3


async def test_figures_that_rest_on_estimates_say_so(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "corpus", 300)
    async with serving(folder, running_emulator.base_url, tmp_path / "state") as (mcp, engine):
        status = await mcp.call_tool("cache_status", {})
        text = status.content[0].text  # type: ignore[union-attr]
        assert "tokens (estimated)" in text
        assert "are local estimates" in text
        assert status.structured_content["tokens_estimated"] is True  # type: ignore[index]
        listing = await mcp.call_tool("list_documents", {"limit": 300})
        documents = listing.structured_content["documents"]  # type: ignore[index]
        estimated = [d for d in documents if d["tokens_estimated"]]
        assert estimated
        assert len(estimated) < len(documents)
        assert "tokens (estimated)" in listing.content[0].text  # type: ignore[union-attr]
        counted = next(d for d in documents if not d["tokens_estimated"])
        assert f"{counted['path']}  ({counted['tokens']:,} tokens," in (
            listing.content[0].text  # type: ignore[union-attr]
        )
        plan = render_plan(plan_report(engine))
        assert "tokens (estimated)" in plan
        assert "(~: a local estimate, not a count" in plan


async def test_a_warm_restart_sketches_no_document_again(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "corpus", 300)
    state = tmp_path / "state"
    async with engine_on(folder, running_emulator.base_url, state) as first:
        estimated = dict(first.current.estimated)
        assert first.counter.sketched >= len(estimated) > 0
    async with engine_on(folder, running_emulator.base_url, state) as again:
        # The sketches come from the ledger, and give the same figures.
        assert again.counter.sketched == 0
        assert again.current.estimated == estimated
        # A checkout that rewrites many files: only their new texts are sketched.
        for n, doc in enumerate(sorted(folder.rglob("*.md"))[: EXACT_UP_TO + 5]):
            doc.write_text(doc.read_text() + f"\nRevised in checkout {n}.\n")
        await again.refresh()
        assert again.counter.sketched == EXACT_UP_TO + 5
