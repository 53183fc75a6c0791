"""PDF and DOCX documents: their text is what is cached, searched and cited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corpus_cache.corpus.scan import scan
from corpus_cache.engine.core import Engine
from corpus_cache.mcp_surface.results import ask_result, render_answer
from support.emulator_control import Control
from support.engines import engine_on
from support.office_files import pdf_bytes, write_docx


def test_a_pdfs_text_is_read_page_by_page(tmp_path: Path) -> None:
    (tmp_path / "policy.pdf").write_bytes(
        pdf_bytes(["The warehouse opens at six.", "Forklifts are inspected every Monday."])
    )
    (doc,) = scan(tmp_path).documents
    assert doc.text.splitlines()[:2] == ["[page 1]", "The warehouse opens at six."]
    assert "Forklifts are inspected every Monday." in doc.text
    line = doc.line_of(doc.text.index("Forklifts"))
    assert doc.page_of(line) == 2
    assert doc.page_of(1) == 1


def test_a_docx_documents_paragraphs_and_tables_are_read(tmp_path: Path) -> None:
    write_docx(tmp_path / "memo.docx", ["Quarterly memo", "Shipments grew by 12 percent."])
    (doc,) = scan(tmp_path).documents
    assert doc.text == "Quarterly memo\nShipments grew by 12 percent.\nRegion | Nordics\n"
    assert doc.page_of(1) is None


def test_pdfs_without_text_or_broken_are_left_out_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "scan.pdf").write_bytes(pdf_bytes([""]))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
    (tmp_path / "broken.docx").write_bytes(b"PK not a zip")
    result = scan(tmp_path)
    reasons = {s.path: s.reason for s in result.skipped}
    assert result.documents == ()
    assert reasons["scan.pdf"] == "PDF has no text layer (a scan?)"
    assert reasons["broken.pdf"].startswith("not a readable PDF")
    assert reasons["broken.docx"].startswith("not a readable DOCX")


@pytest.fixture
async def engine(running_emulator: Any, emulator: Control, tmp_path: Path) -> AsyncIterator[Engine]:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pages = [f"Page {n} of the safety manual covers routine item {n}." for n in range(1, 4)]
    pages[1] = "Forklift batteries are charged in bay seven overnight."
    (corpus / "manual.pdf").write_bytes(pdf_bytes(pages))
    async with engine_on(corpus, running_emulator.base_url, tmp_path / "state") as engine:
        yield engine


@pytest.mark.anyio
async def test_a_citation_into_a_pdf_names_its_page(engine: Engine) -> None:
    answer = await engine.ask("Where are forklift batteries charged?")
    cited = next(c for c in answer.citations if "bay seven" in c.quote)
    assert (cited.path, cited.page) == ("manual.pdf", 2)
    assert "manual.pdf:" in render_answer(ask_result(answer))
    assert "(page 2)" in render_answer(ask_result(answer))
