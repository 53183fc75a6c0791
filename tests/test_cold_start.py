"""A cold start that does not count every file: local estimates calibrated on a few counts,
per model and backend, kept across restarts (api/tokens.py, api/estimate.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.accounting.ledger import Ledger
from corpus_cache.api.tokens import EXACT_UP_TO, START_CALLS, content_key
from corpus_cache.cli.plan_report import plan_report, render_plan
from corpus_cache.emulator.tokenizer import count_text
from corpus_cache.plan.layout import safe_minimum
from support.corpus_fixture import write_folder
from support.emulator_control import Control, EmulatorTime
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


def emulator_count(text: str, path: str) -> int:
    """What the emulator counts for a document block (its framing is 7 tokens)."""
    return count_text(text, "dense") + count_text(path, "dense") + 7


@pytest.mark.parametrize("drift", [0, 40])
async def test_a_staged_build_turns_estimates_into_the_exact_counts_its_usage_gives(
    running_emulator: Any, emulator: Control, tmp_path: Path, drift: int
) -> None:
    folder = write_folder(tmp_path / "corpus", 40, scale=20)  # about 2,700 tokens each
    state = tmp_path / "state"
    emulator.freeze(1_800_000_000.0)
    # count_tokens may count a few tokens of its own: what is learned is still what is billed.
    emulator.post("models", {"claude-sonnet-5-5": {"count_tokens_extra": drift}})
    limits_file = tmp_path / "limits.toml"  # a slice holds one document, rarely two
    limits_file.write_text(
        "[tiers.small]\ncount_tokens_rpm = 10000\n"
        "[tiers.small.classes.sonnet-5-5]\nrpm = 1000\nitpm = 6000\notpm = 100000\n"
    )
    emulator.limits(itpm=6_000, rpm=1_000, otpm=100_000, count_tokens_rpm=10_000)
    time = EmulatorTime(emulator)
    settings: dict[str, Any] = {
        "tier": "small",
        "limits_file": limits_file,
        "model": "claude-sonnet-5-5",
    }
    async with engine_on(
        folder, running_emulator.base_url, state, clock=time.clock, sleep=time.sleep, **settings
    ) as engine:
        before = engine.current
        assert len(before.estimated) >= 15
        assert before.estimate_error > 0
        assert "(estimated)" in render_plan(plan_report(engine))
        for shard in before.shards:
            await engine.builder.build(engine.current, shard)
        after = engine.current
        # Every slice held one document: each estimate is now an exact count.
        assert (after.estimated, after.estimate_error) == ({}, 0.0)
        assert "(estimated)" not in render_plan(plan_report(engine))
    texts = {d.path: d.text for d in after.snapshot.documents}
    for path in before.estimated:  # what the emulator counts, not an estimate's upper end
        assert after.tokens[path] == emulator_count(texts[path], path) < before.tokens[path]
    before_calls = count_calls(emulator)
    async with engine_on(folder, running_emulator.base_url, state, **settings) as again:
        assert count_calls(emulator) - before_calls == 2  # the baseline and the system prompt
        assert again.current.estimated == {}  # stored with the counts: learned once
        assert again.current.tokens == after.tokens


async def test_a_slice_of_several_estimated_documents_gives_their_sum_and_calibrates(
    running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "corpus", 40, scale=20)
    state = tmp_path / "state"
    emulator.freeze(1_800_000_000.0)
    limits_file = tmp_path / "limits.toml"  # a slice holds two documents
    limits_file.write_text(
        "[tiers.small]\ncount_tokens_rpm = 10000\n"
        "[tiers.small.classes.sonnet-5-5]\nrpm = 1000\nitpm = 8000\notpm = 100000\n"
    )
    emulator.limits(itpm=8_000, rpm=1_000, otpm=100_000, count_tokens_rpm=10_000)
    time = EmulatorTime(emulator)
    settings: dict[str, Any] = {
        "tier": "small",
        "limits_file": limits_file,
        "model": "claude-sonnet-5-5",
    }
    async with engine_on(
        folder, running_emulator.base_url, state, clock=time.clock, sleep=time.sleep, **settings
    ) as engine:
        before = engine.current
        for shard in before.shards:
            await engine.builder.build(engine.current, shard)
        after = engine.current
        backend = engine.counter.backend or ""
    texts = {d.path: d.text for d in after.snapshot.documents}
    with sqlite3.connect(state / "ledger.sqlite3") as db:
        sums = db.execute("SELECT members, tokens, kind FROM token_sums").fetchall()
    assert sums
    by_key = {content_key(d): d.path for d in after.snapshot.documents}
    for members, tokens, kind in sums:
        paths = [by_key[key] for key in members.split(" ")]
        assert len(paths) >= 2
        assert tokens == sum(emulator_count(texts[p], p) for p in paths)  # exact
        # Their figures share the exact sum: a breakpoint after them is where it was counted.
        assert sum(after.tokens[p] for p in paths) == tokens
        assert all(after.estimated[p] == after.tokens[p] for p in paths)
        assert kind == "prose"  # one kind: a sample of that kind's ratio
    ledger = Ledger(state / "ledger.sqlite3")
    samples = ledger.calibration_samples("claude-sonnet-5-5", backend)
    ledger.close()
    assert sum(kind.startswith("group:") for kind, _, _ in samples) == len(sums)
