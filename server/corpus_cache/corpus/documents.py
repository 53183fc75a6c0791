"""Documents and the immutable snapshots questions are answered against."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Document:
    """One text file of the corpus, as read at scan time."""

    path: str  # relative to the corpus root, with forward slashes
    text: str
    sha256: str
    size: int
    mtime_ns: int
    line_starts: tuple[int, ...] = field(repr=False)
    pages: tuple[int, ...] = ()  # extracted PDFs: the line where each page starts
    encoding_note: str = ""  # how the bytes were read, when they were not plain UTF-8

    @classmethod
    def from_text(
        cls,
        path: str,
        text: str,
        *,
        size: int,
        mtime_ns: int,
        pages: tuple[int, ...] = (),
        encoding_note: str = "",
    ) -> Document:
        starts = [0]
        index = text.find("\n")
        while index != -1:
            starts.append(index + 1)
            index = text.find("\n", index + 1)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls(path, text, digest, size, mtime_ns, tuple(starts), pages, encoding_note)

    @property
    def line_count(self) -> int:
        starts = self.line_starts
        return len(starts) - 1 if self.text.endswith("\n") else len(starts)

    def line_of(self, char_index: int) -> int:
        """1-based line number of a character offset."""
        return bisect.bisect_right(self.line_starts, max(0, char_index))

    def page_of(self, line: int) -> int | None:
        """The PDF page a line belongs to, for documents extracted from a PDF."""
        if not self.pages:
            return None
        return max(1, bisect.bisect_right(self.pages, line))

    def lines(self, start: int, end: int) -> str:
        """Lines start..end (1-based, inclusive) as text."""
        begin = self.line_starts[start - 1]
        stop = self.line_starts[end] if end < len(self.line_starts) else len(self.text)
        return self.text[begin:stop]


def find(documents: Sequence[Document], path: str) -> Document | None:
    """The document at `path` of `documents` in path order (as a scan and a snapshot hold
    them), if there is one."""
    i = bisect.bisect_left(documents, path, key=lambda d: d.path)
    return documents[i] if i < len(documents) and documents[i].path == path else None


@dataclass(frozen=True)
class Skipped:
    """A file left out of the corpus, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """The corpus at one moment: documents in a deterministic order."""

    root: Path
    version: int
    created_at: float
    documents: tuple[Document, ...]
    skipped: tuple[Skipped, ...]
    _by_path: dict[str, Document] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_path.update({doc.path: doc for doc in self.documents})

    def get(self, path: str) -> Document | None:
        return self._by_path.get(path)

    @property
    def total_bytes(self) -> int:
        return sum(doc.size for doc in self.documents)
