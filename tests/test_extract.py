"""PDF and DOCX documents: their text is what is cached, searched and cited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docx
import pytest

from corpus_cache.corpus.scan import scan
from corpus_cache.engine.core import Engine
from corpus_cache.mcp_surface.results import ask_result, render_answer
from support.emulator_control import Control
from support.engines import engine_on


def pdf_bytes(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page."""
    objects: list[bytes] = []
    count = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(count))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    font = 3 + 2 * count
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def write_docx(path: Path, paragraphs: list[str]) -> None:
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Region"
    table.rows[0].cells[1].text = "Nordics"
    document.save(str(path))


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
