"""Extraction on mutated PDF and DOCX files: a few bytes overwritten, deleted, inserted,
duplicated or cut off, in the file itself or (for a DOCX) inside one of its XML parts.

Whatever the bytes, extraction returns text or leaves the file out with a reason: nothing
else escapes, and the worker's memory stays under its limit. At the end of the module the
figures (cases, outcomes, peak memory, wall time) are written to the terminal.
"""

from __future__ import annotations

import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from budget import fuzz_settings
from corpus_cache.corpus.extract import (
    Extracted,
    ExtractionError,
    ExtractionLimits,
    WorkerStats,
    extract_data,
    worker_stats,
)
from support import hostile_documents as hostile

PDF_SEEDS = hostile.pdf_seeds()
DOCX_SEED = hostile.docx_bytes(["Quarterly memo", "Shipments grew by 12 percent."])
DOCX_PARTS = hostile.parts_of(DOCX_SEED)
# Time limits under hypothesis's 30 s deadline: a case stopped by them is an outcome, not a failure.
LIMITS = ExtractionLimits(cpu_seconds=10, wall_seconds=20)
FIGURES: dict[str, Any] = {"cases": Counter(), "outcomes": Counter()}


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@pytest.fixture(scope="module", autouse=True)
def figures(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    stats = worker_stats()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and sum(FIGURES["cases"].values()):
        with capture.global_and_fixture_disabled():
            _report(reporter, stats, time.monotonic() - started)
    assert stats.peak_rss_bytes <= LIMITS.memory_bytes


def _report(reporter: Any, stats: WorkerStats, seconds: float) -> None:
    cases = ", ".join(f"{n:,} {kind}" for kind, n in sorted(FIGURES["cases"].items()))
    reporter.write_line(
        f"\nextraction fuzz: {cases}; 0 escaped; worker peak RSS "
        f"{stats.peak_rss_bytes / 2**20:.0f} MiB (limit {LIMITS.memory_bytes / 2**20:.0f}), "
        f"{stats.workers_started} workers started; test process peak RSS "
        f"{_peak_rss_bytes() / 2**20:.0f} MiB; {seconds:.0f} s"
    )
    for outcome, n in FIGURES["outcomes"].most_common(12):
        reporter.write_line(f"  {n:6,}  {outcome}")


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with one to six small edits."""
    out = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(0, len(out) - 1)))
        kind = draw(st.sampled_from(["set", "delete", "insert", "duplicate", "digit", "cut"]))
        if kind == "set":
            out[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "duplicate":
            out[at:at] = out[at : at + draw(st.integers(1, 64))]
        elif kind == "digit":  # numbers carry a PDF's structure: lengths, offsets, counts
            out[at : at + 1] = draw(st.sampled_from([b"0", b"9", b"-1", b"99999999", b" "]))
        elif draw(st.booleans()):
            del out[at:]
    return bytes(out)


def check(data: bytes, suffix: str) -> None:
    FIGURES["cases"][suffix] += 1
    try:
        extracted = extract_data(data, suffix, LIMITS)
    except ExtractionError as exc:
        reason = str(exc)
        assert reason
        # Outcomes by their kind: the reason up to its first detail.
        kind = reason.split(":")[0] if ":" in reason else reason
        if kind.startswith("not a readable"):
            kind = ": ".join(reason.split(": ")[:2])
        outcome = f"{suffix} left out: {kind[:70]}"
    else:
        assert isinstance(extracted, Extracted)
        assert isinstance(extracted.text, str)
        extracted.text.encode()  # no lone surrogates
        assert list(extracted.page_lines) == sorted(extracted.page_lines)
        outcome = f"{suffix} read"
    FIGURES["outcomes"][outcome] += 1
    event(outcome)


@fuzz_settings(default=20)
@given(st.sampled_from(PDF_SEEDS).flatmap(mutated))
def test_any_mutated_pdf_is_read_or_left_out_with_a_reason(data: bytes) -> None:
    check(data, ".pdf")


@fuzz_settings(default=20)
@given(st.data())
def test_any_mutated_docx_is_read_or_left_out_with_a_reason(data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="inside a part"):
        name = data.draw(st.sampled_from(sorted(DOCX_PARTS)), label="part")
        docx = hostile.with_part(DOCX_SEED, name, data.draw(mutated(DOCX_PARTS[name])))
    else:
        docx = data.draw(mutated(DOCX_SEED), label="zip bytes")
    check(docx, ".docx")
