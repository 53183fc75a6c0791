"""Issue 15, class 3: one bad file stops everything.

A PDF or DOCX is parsed by third-party code (pypdf, python-docx, lxml, zipfile) that raises
whatever a malformed file provokes, and whose time and memory grow with what the file
claims rather than with its size. Extraction must be total (every file is read or left out
with its reason; the scan, `plan`, `serve` and the watcher go on) and bounded (unpacked
size, pages, CPU time, wall time and memory), and no XML entity is ever expanded.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from docx.opc.oxml import parse_xml as parse_package_xml
from docx.oxml.parser import parse_xml as parse_document_xml
from lxml import etree

from corpus_cache.corpus.extract import (
    Extracted,
    ExtractionError,
    ExtractionLimits,
    extract_data,
    worker_stats,
)
from corpus_cache.corpus.scan import scan
from support import hostile_documents as hostile
from support.emulator_control import Control
from support.live_folder import Swaps, paths, watched
from support.mcp_session import serving
from support.office_files import pdf_bytes


def reasons(corpus: Path) -> dict[str, str]:
    return {s.path: s.reason for s in scan(corpus).skipped}


def outcome(data: bytes, suffix: str, limits: ExtractionLimits | None = None) -> str:
    """'read', 'left out: <reason>', or the exception that escaped (what must never happen)."""
    try:
        extracted = extract_data(data, suffix, limits)
    except ExtractionError as exc:
        return f"left out: {exc}"
    except Exception as exc:
        return f"ESCAPED {type(exc).__name__}: {exc}"
    assert isinstance(extracted, Extracted)
    return "read"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "handbook.md").write_text("# Handbook\n\nThe kettle is descaled on Fridays.\n")
    (root / "memo.docx").write_bytes(hostile.docx_bytes(["Shipments grew by 12 percent."]))
    (root / "policy.pdf").write_bytes(pdf_bytes(["The warehouse opens at six."]))
    return root


def test_a_docx_with_truncated_xml_is_left_out_with_its_reason_and_the_rest_is_served(
    corpus: Path,
) -> None:
    (corpus / "broken.docx").write_bytes(hostile.truncated_docx())
    result = scan(corpus)
    assert {d.path for d in result.documents} == {"handbook.md", "memo.docx", "policy.pdf"}
    reason = {s.path: s.reason for s in result.skipped}["broken.docx"]
    assert reason.startswith("not a readable DOCX: XMLSyntaxError")


def test_plan_runs_on_a_folder_holding_a_truncated_docx_and_a_mutated_pdf(
    corpus: Path, tmp_path: Path
) -> None:
    (corpus / "broken.docx").write_bytes(hostile.truncated_docx())
    (corpus / "broken.pdf").write_bytes(pdf_bytes(["x"]).replace(b"/Kids [", b"/Kids 7 ["))
    done = subprocess.run(
        [sys.executable, "-m", "corpus_cache", "plan", "--corpus", str(corpus), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
        env={"CORPUS_CACHE_STATE_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_a_billion_laughs_docx_is_left_out_without_expanding_an_entity(corpus: Path) -> None:
    (corpus / "laughs.docx").write_bytes(hostile.billion_laughs_docx())
    reason = reasons(corpus)["laughs.docx"]
    assert "declares a DTD or entities" in reason


def test_an_external_entity_in_a_docx_never_reads_the_file_it_names(
    corpus: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("OUTSIDE-THE-CORPUS-7f3a\n")
    (corpus / "leak.docx").write_bytes(hostile.external_entity_docx(outside.as_uri()))
    result = scan(corpus)
    assert "leak.docx" not in {d.path for d in result.documents}
    assert all("OUTSIDE-THE-CORPUS" not in d.text for d in result.documents)
    assert "declares a DTD or entities" in {s.path: s.reason for s in result.skipped}["leak.docx"]


@pytest.mark.parametrize("parse", [parse_document_xml, parse_package_xml])
def test_python_docxs_own_parsers_leave_entities_unexpanded(parse: Any) -> None:
    # Behind the DTD check, the parsers python-docx uses must not substitute entities
    # either: this fails if an upgrade changes how they are configured.
    xml = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "EXPANDED-ENTITY">]>'
        b'<r xmlns="http://schemas.openxmlformats.org/package/2006/relationships">&e;</r>'
    )
    assert b"EXPANDED-ENTITY" not in etree.tostring(parse(xml))


def test_a_zip_bomb_docx_is_refused_before_it_is_unpacked(corpus: Path) -> None:
    # 100 MB of document XML in a few hundred KB (the was 150 MB in 460 KB).
    bomb = hostile.zip_bomb_docx(100_000_000)
    assert len(bomb) < 1_000_000
    (corpus / "bomb.docx").write_bytes(bomb)
    result = scan(corpus)
    assert "bomb.docx" not in {d.path for d in result.documents}
    reason = {s.path: s.reason for s in result.skipped}["bomb.docx"]
    assert reason.startswith("a zip bomb: its XML declares 100,")


def test_a_zip_bomb_whose_headers_understate_its_size_is_refused(corpus: Path) -> None:
    (corpus / "liar.docx").write_bytes(hostile.lying_zip_bomb_docx(100_000_000))
    assert "does not unpack to the size it declares" in reasons(corpus)["liar.docx"]


def test_an_archive_nested_in_an_embedded_archive_is_refused_and_one_level_is_read(
    corpus: Path,
) -> None:
    (corpus / "chart.docx").write_bytes(hostile.nested_archive_docx(1))
    (corpus / "nested.docx").write_bytes(hostile.nested_archive_docx(2))
    result = scan(corpus)
    assert "chart.docx" in {d.path for d in result.documents}
    reason = {s.path: s.reason for s in result.skipped}["nested.docx"]
    assert reason.startswith("an archive nested in an archive")


def test_a_docx_of_thousands_of_parts_is_refused(corpus: Path) -> None:
    (corpus / "parts.docx").write_bytes(hostile.many_members_docx(3_000))
    assert "more than the 2,000 a DOCX may" in reasons(corpus)["parts.docx"]


def test_mutated_pdfs_are_each_read_or_left_out_with_a_reason() -> None:
    # The issue found 16 escaping exceptions in 3,000 mutations; these 400 held several.
    rng = random.Random(15)
    seeds = hostile.pdf_seeds()
    escaped = [
        (n, result)
        for n in range(400)
        if (result := outcome(hostile.mutate(rng.choice(seeds), rng, rng.randint(1, 4)), ".pdf"))
        .startswith("ESCAPED")
    ]  # fmt: skip
    assert escaped == []


def test_mutated_docx_files_are_each_read_or_left_out_with_a_reason() -> None:
    rng = random.Random(15)
    seed = hostile.docx_bytes(["Quarterly memo", "Shipments grew by 12 percent."])
    parts = hostile.parts_of(seed)
    escaped = []
    for n in range(60):
        name = rng.choice(sorted(parts))
        mutated = hostile.with_part(seed, name, hostile.mutate(parts[name], rng, 2))
        if (result := outcome(mutated, ".docx")).startswith("ESCAPED"):
            escaped.append((n, name, result))
    assert escaped == []


def test_a_scan_of_many_mutated_files_lists_each_as_read_or_left_out(tmp_path: Path) -> None:
    rng = random.Random(3)
    seeds = hostile.pdf_seeds()
    for n in range(40):
        (tmp_path / f"m{n:02}.pdf").write_bytes(hostile.mutate(rng.choice(seeds), rng, 3))
    result = scan(tmp_path)
    listed = {d.path for d in result.documents} | {s.path for s in result.skipped}
    assert listed == {f"m{n:02}.pdf" for n in range(40)}


def test_a_small_pdf_needing_minutes_of_cpu_is_stopped_and_the_next_file_is_read() -> None:
    # 20 KB that pypdf would spend about twenty seconds of CPU on.
    heavy = hostile.cpu_heavy_pdf(2_000_000)
    limits = ExtractionLimits(cpu_seconds=1)
    assert outcome(heavy, ".pdf", limits) == (
        "left out: extraction used more than 1 s of CPU, and was stopped"
    )
    assert outcome(pdf_bytes(["Still readable."]), ".pdf", limits) == "read"
    # A rescan (the watcher makes one after every save) does not spend the allowance again.
    files = worker_stats().files
    assert outcome(heavy, ".pdf", limits) == (
        "left out: extraction used more than 1 s of CPU, and was stopped"
    )
    assert worker_stats().files == files


def test_a_pdf_past_the_wall_clock_limit_is_stopped_and_the_next_file_is_read() -> None:
    limits = ExtractionLimits(wall_seconds=0.5)
    assert outcome(hostile.cpu_heavy_pdf(2_000_000), ".pdf", limits) == (
        "left out: extraction took longer than 0.5 s, and was stopped"
    )
    assert outcome(pdf_bytes(["Still readable."]), ".pdf", limits) == "read"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is enforced on Linux")
def test_a_docx_needing_more_memory_than_allowed_is_left_out_and_the_next_is_read() -> None:
    # 30 MB of XML, under the size limits, takes about 380 MB to parse.
    limits = ExtractionLimits(memory_bytes=250_000_000)
    assert outcome(hostile.zip_bomb_docx(30_000_000), ".docx", limits) == (
        "left out: needed more than the 250,000,000 bytes of memory extraction may use"
    )
    assert outcome(hostile.docx_bytes(["Still readable."]), ".docx", limits) == "read"


@pytest.mark.anyio
async def test_a_bad_docx_saved_while_serving_is_left_out_and_the_server_keeps_answering(
    corpus: Path, running_emulator: Any, emulator: Control, tmp_path: Path
) -> None:
    (corpus / "mutated.pdf").write_bytes(
        hostile.mutate(hostile.pdf_seeds()[1], random.Random(8), 4)
    )
    async with serving(corpus, running_emulator.base_url, tmp_path / "state") as (mcp, engine):
        swaps = Swaps(engine)
        async with watched(engine):
            (corpus / "broken.docx").write_bytes(hostile.truncated_docx())
            (corpus / "laughs.docx").write_bytes(hostile.billion_laughs_docx())
            snapshot = await swaps.until(
                lambda s: {"broken.docx", "laughs.docx"} <= {k.path for k in s.skipped}
            )
            assert {"handbook.md", "memo.docx", "policy.pdf"} <= paths(snapshot)
            # The watcher is still running: a later save is live.
            (corpus / "later.md").write_text("The boiler is serviced in March.\n")
            await swaps.until(lambda s: "later.md" in paths(s))
        found = await mcp.call_tool("search", {"query": "kettle descaled"})
        assert not found.is_error
        assert "handbook.md" in str(found.content)
        answer = await mcp.call_tool("ask", {"question": "When is the boiler serviced?"})
        assert not answer.is_error
