"""What extraction returns, what it raises, and the bounds it works within."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MAX_EXTRACTED_FILE_BYTES = 50 * 1024 * 1024  # a PDF or DOCX file itself


class ExtractionError(ValueError):
    """The file could not be turned into text; the message says why."""


@dataclass(frozen=True)
class Extracted:
    text: str
    page_lines: tuple[int, ...] = ()  # 1-based line where each page starts (PDF only)


@dataclass(frozen=True)
class ExtractionLimits:
    """Bounds on one file's extraction. Sizes are checked before anything is parsed; time
    and memory are enforced on the worker process (where the platform allows)."""

    max_text_bytes: int = 2 * 1024 * 1024  # text past this is not gathered
    max_pages: int = 5_000
    max_zip_members: int = 2_000  # Word writes a few dozen
    max_unpacked_bytes: int = 256 * 1024 * 1024  # all of a DOCX's parts, images included
    max_xml_bytes: int = 32 * 1024 * 1024  # the parts lxml parses: ~10x this in memory
    memory_bytes: int = 1024 * 1024 * 1024  # the worker's address space
    cpu_seconds: int = 30
    wall_seconds: float = 60.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
