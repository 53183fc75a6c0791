"""PDF and DOCX bytes to text, through pypdf and python-docx, with every input bounded.

This runs inside the extraction worker (extract_worker.py), under its memory and CPU
limits. Before a parser sees a DOCX, its zip is checked: how many members, how many bytes
they declare and how many they actually unpack to (read with a limit, never trusting the
header), no DTD in any XML part, no archive inside an archive inside it. A PDF's page count
is checked before its pages are read, and text stops being gathered once it is past the
caller's limit. `parse` is total: it returns the text or raises ExtractionError.
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Iterable

from .extracted import Extracted, ExtractionError, ExtractionLimits

# pypdf warns on stderr-bound loggers about every oddity of real-world PDFs.
logging.getLogger("pypdf").setLevel(logging.ERROR)

_CHUNK = 1 << 16
_ZIP_MAGIC = b"PK\x03\x04"
# Compressed formats Word never stores as they are (an embedded file is wrapped in OLE).
_OTHER_ARCHIVES = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"7z\xbc\xaf\x27\x1c": "7-Zip",
    b"Rar!\x1a\x07": "RAR",
}
# Office Open XML forbids DTDs; refusing them before lxml parses means no entity is ever
# declared, so none can be expanded (billion laughs) or fetched (external entities).
_DTD_MARKERS = tuple(
    "<!DOCTYPE".encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be")
) + tuple("<!ENTITY".encode(codec) for codec in ("utf-8", "utf-16-le", "utf-16-be"))


def _bytes(size: int) -> str:
    return f"{size:,} bytes"


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """A member's bytes, stopping once more than `budget` came out, whatever it declared."""
    chunks: list[bytes] = []
    size = 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(_CHUNK):
                size += len(chunk)
                if size > budget:
                    raise ExtractionError(
                        f"a zip bomb: {info.filename} unpacks to more than it declares, past "
                        f"the {_bytes(budget)} left under the limit on unpacked size"
                    )
                chunks.append(chunk)
    except zipfile.BadZipFile as exc:
        # zipfile stops at the declared size and then finds the checksum wrong.
        raise ExtractionError(
            f"not a readable DOCX: {info.filename} is damaged or does not unpack to the size "
            f"it declares ({exc})"
        ) from exc
    return b"".join(chunks)


def _archive_kind(head: bytes) -> str | None:
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    return next((kind for magic, kind in _OTHER_ARCHIVES.items() if head.startswith(magic)), None)


def _check_embedded_zip(name: str, blob: bytes, limits: ExtractionLimits, unpacked: int) -> None:
    """An embedded zip (a chart's spreadsheet) is never unpacked, but what it declares counts
    toward the unpacked-size limit, and an archive inside it is refused."""
    try:
        inner = zipfile.ZipFile(io.BytesIO(blob))
    except (zipfile.BadZipFile, EOFError, ValueError):
        return  # not a zip python-docx would open either: an opaque blob, never unpacked
    with inner:
        members = [m for m in inner.infolist() if not m.is_dir()]
        if len(members) > limits.max_zip_members:
            raise ExtractionError(f"{name} inside it holds {len(members):,} files (a zip bomb?)")
        declared = sum(m.file_size for m in members)
        if unpacked + declared > limits.max_unpacked_bytes:
            raise ExtractionError(
                f"a zip bomb: {name} inside it declares {_bytes(declared)} unpacked, past "
                f"the {limits.max_unpacked_bytes:,}-byte limit"
            )
        for member in members:
            try:
                with inner.open(member) as stream:
                    head = stream.read(8)
            except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError, OSError):
                continue  # damaged or encrypted: it stays unread
            if (kind := _archive_kind(head)) is not None:
                raise ExtractionError(
                    f"an archive nested in an archive: {name} holds a {kind} archive "
                    f"({member.filename})"
                )


def check_docx_package(data: bytes, limits: ExtractionLimits) -> None:
    """Refuse a DOCX whose zip is larger unpacked than the limits allow, or that holds a
    DTD or a nested archive, before python-docx reads any of it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ExtractionError(f"not a readable DOCX: {exc}") from exc
    with archive:
        members = archive.infolist()
        if len(members) > limits.max_zip_members:
            raise ExtractionError(
                f"holds {len(members):,} files, more than the {limits.max_zip_members:,} a "
                "DOCX may (a zip bomb?)"
            )
        declared = sum(m.file_size for m in members)
        if declared > limits.max_unpacked_bytes:
            raise ExtractionError(
                f"a zip bomb: declares {_bytes(declared)} unpacked from {_bytes(len(data))}, "
                f"more than the {limits.max_unpacked_bytes:,}-byte limit"
            )
        declared_xml = sum(m.file_size for m in members if _is_xml(m.filename))
        if declared_xml > limits.max_xml_bytes:
            raise ExtractionError(
                f"a zip bomb: its XML declares {_bytes(declared_xml)} unpacked, more than "
                f"the {limits.max_xml_bytes:,}-byte limit"
            )
        unpacked = 0
        xml = 0
        for info in members:
            if info.is_dir():
                continue
            blob = _read_member(archive, info, limits.max_unpacked_bytes - unpacked)
            unpacked += len(blob)
            if _is_xml(info.filename):
                xml += len(blob)
                if xml > limits.max_xml_bytes:
                    raise ExtractionError(
                        "a zip bomb: its XML unpacks to more than the "
                        f"{limits.max_xml_bytes:,}-byte limit"
                    )
                if any(marker in blob for marker in _DTD_MARKERS):
                    raise ExtractionError(
                        f"{info.filename} declares a DTD or entities, which DOCX files may not "
                        "(entities are never expanded)"
                    )
            kind = _archive_kind(blob[:8])
            if kind == "zip":
                _check_embedded_zip(info.filename, blob, limits, unpacked)
            elif kind is not None:
                raise ExtractionError(
                    f"an archive nested in the DOCX: {info.filename} is a {kind} archive"
                )


def _is_xml(name: str) -> bool:
    return name.lower().endswith((".xml", ".rels"))


class _Text:
    """Lines of text gathered up to a byte limit: past it, gathering stops (the caller leaves
    a file whose text is too large out, and needs no more of it to know)."""

    def __init__(self, limit: int) -> None:
        self.lines: list[str] = []
        self.size = 0
        self.limit = limit

    @property
    def full(self) -> bool:
        return self.size > self.limit

    def extend(self, lines: Iterable[str]) -> None:
        for line in lines:
            if self.full:
                return
            # A lone surrogate from a broken font map would fail every later encode.
            clean = line.encode("utf-8", "replace").decode("utf-8")
            self.lines.append(clean)
            self.size += len(clean.encode()) + 1


def _pdf(data: bytes, limits: ExtractionLimits) -> Extracted:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        raise ExtractionError("encrypted PDF")
    count = len(reader.pages)
    if count > limits.max_pages:
        raise ExtractionError(f"{count:,} pages, more than the {limits.max_pages:,}-page limit")
    text = _Text(limits.max_text_bytes)
    starts: list[int] = []
    any_text = False
    for number in range(1, count + 1):
        if text.full:
            break
        page = reader.pages[number - 1].extract_text() or ""
        any_text = any_text or bool(page.strip())
        starts.append(len(text.lines) + 1)
        text.extend([f"[page {number}]", *page.strip("\n").splitlines(), ""])
    if not any_text:
        raise ExtractionError("PDF has no text layer (a scan?)")
    return Extracted("\n".join(text.lines), tuple(starts))


def _docx(data: bytes, limits: ExtractionLimits) -> Extracted:
    import docx

    check_docx_package(data, limits)
    document = docx.Document(io.BytesIO(data))
    text = _Text(limits.max_text_bytes)
    text.extend(paragraph.text for paragraph in document.paragraphs)
    for table in document.tables:
        for row in table.rows:
            text.extend([" | ".join(cell.text.strip() for cell in row.cells)])
    joined = "\n".join(text.lines).strip()
    if not joined:
        raise ExtractionError("DOCX has no text")
    return Extracted(joined + "\n")


def parse(data: bytes, suffix: str, limits: ExtractionLimits) -> Extracted:
    """The text of a PDF or DOCX file's bytes, by the file's suffix; ExtractionError says why
    there is none."""
    suffix = suffix.lower()
    what = {".pdf": "PDF", ".docx": "DOCX"}.get(suffix)
    if what is None:
        raise ExtractionError(f"no text extractor for {suffix} files")
    try:
        return _pdf(data, limits) if suffix == ".pdf" else _docx(data, limits)
    except ExtractionError:
        raise
    except MemoryError as exc:
        raise ExtractionError(
            f"needed more than the {limits.memory_bytes:,} bytes of memory extraction may use"
        ) from exc
    except RecursionError as exc:
        raise ExtractionError(f"not a readable {what}: nested too deeply") from exc
    except Exception as exc:
        # The one boundary where a broad catch is right: pypdf, python-docx, lxml and zipfile
        # raise whatever a malformed file provokes (AttributeError, TypeError, KeyError,
        # XMLSyntaxError, LimitReachedError...). Any of them means this file has no text we
        # can read; the reason is recorded and the scan goes on with the other files.
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        reason = f"not a readable {what}: {type(exc).__name__}"
        raise ExtractionError(f"{reason}: {detail}" if detail else reason) from exc
