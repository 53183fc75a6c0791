"""PDF and DOCX files built to break a parser: truncated, bombed, entity-laden, mutated.

Built in the test, from python-docx's own output and a minimal hand-written PDF, so that
each one differs from a valid file only in the way it names.
"""

from __future__ import annotations

import io
import random
import zipfile
import zlib
from collections.abc import Callable, Iterator

import docx
from pypdf import PdfReader, PdfWriter

from test_extract import pdf_bytes

DOCUMENT_XML = "word/document.xml"
_W = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
_PARAGRAPH = b"<w:p><w:r><w:t>All work and no play makes Jack a dull boy.</w:t></w:r></w:p>"


def docx_bytes(paragraphs: list[str], table: bool = True) -> bytes:
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        cells = document.add_table(rows=1, cols=2).rows[0].cells
        cells[0].text, cells[1].text = "Region", "Nordics"
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def parts_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def zipped(parts: dict[str, bytes | Callable[[], Iterator[bytes]]], zip64: bool = True) -> bytes:
    """A zip of these parts; a callable part is streamed in, never held whole in memory."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, part in parts.items():
            if isinstance(part, bytes):
                archive.writestr(name, part)
            else:
                with archive.open(name, "w", force_zip64=zip64) as member:
                    for chunk in part():
                        member.write(chunk)
    return out.getvalue()


def with_part(
    data: bytes, name: str, part: bytes | Callable[[], Iterator[bytes]], zip64: bool = True
) -> bytes:
    parts: dict[str, bytes | Callable[[], Iterator[bytes]]] = dict(parts_of(data))
    parts[name] = part
    return zipped(parts, zip64)


def truncated_docx() -> bytes:
    """A DOCX whose document.xml stops half-way through (a save cut short)."""
    data = docx_bytes(["Quarterly memo", "Shipments grew by 12 percent."])
    xml = parts_of(data)[DOCUMENT_XML]
    return with_part(data, DOCUMENT_XML, xml[: len(xml) // 2])


def billion_laughs_docx(levels: int = 9) -> bytes:
    """Ten to the power `levels` copies of 'lol' in one entity reference, a few KB on disk."""
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, levels + 1)
    ]
    doctype = f"<!DOCTYPE w:document [{''.join(entities)}]>".encode()
    body = f"<w:body><w:p><w:r><w:t>Laughs: &lol{levels};</w:t></w:r></w:p></w:body>".encode()
    xml = b'<?xml version="1.0" encoding="UTF-8"?>\n' + doctype
    xml += b"<w:document " + _W + b">" + body + b"</w:document>"
    return with_part(docx_bytes(["Hello"]), DOCUMENT_XML, xml)


def external_entity_docx(target: str) -> bytes:
    """A DOCX whose text is an external entity naming `target` (a file:// URL)."""
    doctype = f'<!DOCTYPE w:document [<!ENTITY leak SYSTEM "{target}">]>'.encode()
    xml = b'<?xml version="1.0" encoding="UTF-8"?>\n' + doctype + b"<w:document " + _W + b">"
    xml += b"<w:body><w:p><w:r><w:t>Leaked: &leak;</w:t></w:r></w:p></w:body></w:document>"
    return with_part(docx_bytes(["Hello"]), DOCUMENT_XML, xml)


def zip_bomb_docx(unpacked_bytes: int, zip64: bool = True) -> bytes:
    """A DOCX whose document.xml is `unpacked_bytes` of valid, repetitive paragraphs,
    deflated to a few hundred kilobytes."""

    def xml() -> Iterator[bytes]:
        yield b'<?xml version="1.0" encoding="UTF-8"?>\n<w:document ' + _W + b"><w:body>"
        block = _PARAGRAPH * 10_000
        for _ in range(unpacked_bytes // len(block)):
            yield block
        yield b"</w:body></w:document>"

    return with_part(docx_bytes(["Hello"]), DOCUMENT_XML, xml, zip64=zip64)


def lying_zip_bomb_docx(unpacked_bytes: int) -> bytes:
    """A zip bomb whose headers declare document.xml to be 100 bytes long."""
    data = bytearray(zip_bomb_docx(unpacked_bytes, zip64=False))
    name = DOCUMENT_XML.encode()
    # (signature, offset of the uncompressed size, of the name's length, of the name) in
    # the local header and in the central directory.
    for signature, size_at, length_at, name_at in (
        (b"PK\x03\x04", 22, 26, 30),
        (b"PK\x01\x02", 24, 28, 46),
    ):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            start = at + 4
            length = int.from_bytes(data[at + length_at : at + length_at + 2], "little")
            if data[at + name_at : at + name_at + length] == name:
                data[at + size_at : at + size_at + 4] = (100).to_bytes(4, "little")
    return bytes(data)


def nested_archive_docx(depth: int) -> bytes:
    """A DOCX holding an embedded zip, which holds zips `depth - 1` levels deeper."""
    inner = b"an ordinary attachment"
    name = "note.txt"
    for level in range(depth):
        inner = zipped({name: inner})
        name = f"level{level}.zip"
    return with_part(docx_bytes(["Hello"]), "word/embeddings/package.zip", inner)


def many_members_docx(count: int) -> bytes:
    parts: dict[str, bytes | Callable[[], Iterator[bytes]]] = dict(parts_of(docx_bytes(["Hello"])))
    parts.update({f"customXml/item{n}.bin": b"" for n in range(count)})
    return zipped(parts)


def cpu_heavy_pdf(operators: int) -> bytes:
    """A PDF of a few KB whose one page holds `operators` text-showing operators once
    inflated: pypdf spends seconds of CPU per hundred thousand."""
    content = zlib.compress(b"BT /F1 12 Tf 72 720 Td " + b"(x) Tj " * operators + b"ET", 9)
    stream = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
    return _pdf_with_content(stream + content + b"\nendstream")


def _pdf_with_content(content_object: bytes) -> bytes:
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        content_object,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def pdf_seeds() -> list[bytes]:
    """Valid PDFs to mutate: plain content streams, and the same written by pypdf with its
    streams deflated (a cross-reference pypdf rebuilt, filters to decode)."""
    plain = pdf_bytes(["The warehouse opens at six.", "Forklifts are inspected on Monday.",
                       "Third page (with parentheses) here."])  # fmt: skip
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(plain)))
    for page in writer.pages:
        page.compress_content_streams()
    out = io.BytesIO()
    writer.write(out)
    return [plain, out.getvalue()]


def mutate(data: bytes, rng: random.Random, edits: int) -> bytes:
    """A few-byte mutation: bytes overwritten, deleted, inserted or the file cut short."""
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out)) if out else 0
        roll = rng.random()
        if roll < 0.45:
            out[at : at + 1] = bytes([rng.randrange(256)])
        elif roll < 0.7:
            del out[at : at + rng.randint(1, 8)]
        elif roll < 0.95:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        else:
            del out[at:]
    return bytes(out)
