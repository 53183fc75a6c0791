"""Text from PDF and DOCX files, through pypdf and python-docx.

What is cached, searched and cited is the extracted text. A PDF's text is laid out page by
page, each page introduced by a line `[page N]`, and the line where each page starts is
kept so that a citation can name the page. A PDF with no text layer (a scan) has nothing
to extract and is left out with that reason.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .reading import UnreadableError, read_regular_file

EXTRACTED_SUFFIXES = frozenset({".pdf", ".docx"})
MAX_EXTRACTED_FILE_BYTES = 50 * 1024 * 1024  # a PDF or DOCX file itself

# pypdf warns on stderr-bound loggers about every oddity of real-world PDFs.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class ExtractionError(ValueError):
    """The file could not be turned into text; the message says why."""


@dataclass(frozen=True)
class Extracted:
    text: str
    page_lines: tuple[int, ...] = ()  # 1-based line where each page starts (PDF only)


def _pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ExtractionError("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as exc:
        raise ExtractionError(f"not a readable PDF: {exc}") from exc
    if not any(page.strip() for page in pages):
        raise ExtractionError("PDF has no text layer (a scan?)")
    lines: list[str] = []
    starts: list[int] = []
    for number, page in enumerate(pages, start=1):
        starts.append(len(lines) + 1)
        lines.append(f"[page {number}]")
        lines.extend(page.strip("\n").splitlines())
        lines.append("")
    return Extracted("\n".join(lines), tuple(starts))


def _docx(data: bytes) -> Extracted:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"not a readable DOCX: {exc}") from exc
    lines = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    text = "\n".join(lines).strip()
    if not text:
        raise ExtractionError("DOCX has no text")
    return Extracted(text + "\n")


def extract(path: Path, limit: int = MAX_EXTRACTED_FILE_BYTES) -> Extracted:
    """The text of a PDF or DOCX file. Raises ExtractionError with a reason a user can read."""
    try:
        data = read_regular_file(path, limit)
    except UnreadableError as exc:
        raise ExtractionError(str(exc)) from exc
    return extract_data(data, path.suffix)


def extract_data(data: bytes, suffix: str) -> Extracted:
    """The text of a PDF or DOCX file's bytes, by the file's suffix."""
    suffix = suffix.lower()
    if suffix == ".pdf":
        return _pdf(data)
    if suffix == ".docx":
        return _docx(data)
    raise ExtractionError(f"no text extractor for {suffix} files")
