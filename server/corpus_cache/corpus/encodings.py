"""Turning a file's bytes into text: UTF-8 first, a few others when they are certain. Pure.

In order:
1. A byte-order mark says the encoding: UTF-16 or UTF-32 (little or big endian), unless
   what it decodes to is not text. UTF-8's mark is dropped, and the rest read as below.
2. A NUL byte in the first 8 KB, with no byte-order mark: binary, left out.
3. Valid UTF-8: read as it is.
4. Mostly UTF-8 (the bytes of valid multi-byte characters outnumber those that are not
   UTF-8 four to one; legacy encodings make valid UTF-8 pairs only by chance, far fewer):
   read as UTF-8, each invalid byte replaced by U+FFFD, and noted.
5. Japanese text in Shift-JIS (it decodes as Windows code page 932 and much of it is kana):
   read as Shift-JIS, and noted.
6. Western text in Windows-1252 or Latin-1 (bytes above 0x7F are few, as accented letters
   and typographic quotes are): read as Windows-1252, and noted.
   Text read by 1, 5 or 6 is refused as binary if over 1% of it is control characters,
   replacement characters or private-use code points.
7. Anything else is left out with the advice to save it as UTF-8: a guessed encoding that
   is wrong would send the model garbage, and cost tokens for it.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

SNIFF_BYTES = 8192
_BOMS = (  # UTF-32's marks first: UTF-16's little-endian mark is a prefix of UTF-32's
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)
_HIGH_BYTES = bytes(range(0x80, 0x100))
_WHITESPACE = b" \t\r\n\f\v"
_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of invalid bytes
_KANA = re.compile("[\u3040-\u30ff]")  # hiragana and katakana, full width
_NON_ASCII = re.compile("[^\x00-\x7f]")
# Control characters (not tab, newline, ESC), replacement characters and private-use
# code points: what bytes that are not text turn into.
_SUSPICIOUS = re.compile(
    "[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f\ufffd\ue000-\uf8ff\U000f0000-\U0010ffff]"
)
UTF8_VALID_PER_INVALID = 4  # bytes in valid multi-byte characters, per invalid byte
WESTERN_HIGH_SHARE = 0.3  # of the non-blank bytes, at most, in a Windows-1252 text
KANA_SHARE = 0.2  # of the non-ASCII characters, at least, in a Shift-JIS text
SUSPICIOUS_SHARE = 0.01  # of the characters, at most, in text read from another encoding


class NotTextError(ValueError):
    """The bytes are not text this policy reads; the message says why, for the skip list."""


@dataclass(frozen=True)
class Decoded:
    text: str
    note: str = ""  # how the bytes were read, when they were not plain UTF-8


def decode(raw: bytes) -> Decoded:
    """The text of a file's bytes, or NotTextError. See the module's docstring."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]  # then read as any UTF-8, by the steps below
    for bom, codec, name in _BOMS:
        if raw.startswith(bom):
            return _decode_marked(raw[len(bom) :], codec, name)
    if b"\x00" in raw[:SNIFF_BYTES]:
        raise NotTextError("binary content")
    try:
        return Decoded(raw.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    high = len(raw) - len(raw.translate(None, _HIGH_BYTES))
    escaped = raw.decode("utf-8", errors="surrogateescape")
    text, invalid = _ESCAPED.subn("\ufffd", escaped)
    if high - invalid >= UTF8_VALID_PER_INVALID * invalid:
        return Decoded(text, f"UTF-8 with {_bytes(invalid)} that are not UTF-8 replaced by U+FFFD")
    japanese = _shift_jis(raw)
    if japanese is not None:
        return _plausible(Decoded(japanese, "read as Shift-JIS: not UTF-8"))
    blank = len(raw) - len(raw.translate(None, _WHITESPACE))
    if high <= WESTERN_HIGH_SHARE * max(1, len(raw) - blank):
        try:
            western = raw.decode("cp1252")
        except UnicodeDecodeError:  # five bytes Windows-1252 leaves undefined
            western = raw.decode("latin-1")
        return _plausible(Decoded(western, "read as Windows-1252 (Latin-1): not UTF-8"))
    raise NotTextError(
        "not UTF-8, and not in an encoding that can be told for certain: save it as UTF-8"
    )


def _decode_marked(body: bytes, codec: str, name: str) -> Decoded:
    try:
        decoded = Decoded(body.decode(codec), f"read as {name}")
    except UnicodeDecodeError:
        note = f"read as {name}, with bytes that do not decode replaced"
        decoded = Decoded(body.decode(codec, errors="replace"), note)
    # Binary data may begin with what looks like a mark, and UTF-16 decodes almost anything.
    return _plausible(decoded)


def _shift_jis(raw: bytes) -> str | None:
    try:
        text = raw.decode("cp932")
    except UnicodeDecodeError:
        return None
    non_ascii = len(_NON_ASCII.findall(text))
    kana = len(_KANA.findall(text))
    return text if non_ascii and kana >= KANA_SHARE * non_ascii else None


def _plausible(decoded: Decoded) -> Decoded:
    """Text read from another encoding is refused if much of it is not text at all."""
    if len(_SUSPICIOUS.findall(decoded.text)) > SUSPICIOUS_SHARE * len(decoded.text):
        raise NotTextError("binary content")
    return decoded


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count:,} bytes"
