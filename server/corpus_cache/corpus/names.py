"""File names the corpus can serve and cite unambiguously, and how the others are shown. Pure.

A document's path is its title in every request and the first half of every citation
(`path:line`), and list outputs put one path per line. A name with a line break or another
control character, a text-direction override, bytes that are not UTF-8, or a backslash
(which clients read as a folder separator) cannot be shown or named back reliably, so the
file or folder is left out, and its name is shown escaped in the list of what was left out.
"""

from __future__ import annotations

import unicodedata

# Characters that reorder how the text around them is displayed ("Trojan Source").
DIRECTION_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def name_problem(name: str) -> str | None:
    """Why a file or folder name cannot be served as it is, or None if it can."""
    if name.isprintable() and "\\" not in name:
        return None
    for char in name:
        category = unicodedata.category(char)
        if category == "Cs":  # os.fsdecode turns each byte that is not UTF-8 into one
            return "name is not valid UTF-8"
        if char in "\n\r" or category in ("Zl", "Zp"):
            return "name contains a line break"
        if category == "Cc":
            return "name contains a control character"
        if char in DIRECTION_CONTROLS:
            return "name contains a text-direction control character"
        if char == "\\":
            return "name contains a backslash, which clients take for a folder separator"
    return None


def shown(path: str) -> str:
    """`path` on one line, with nothing hidden: bytes that are not UTF-8 as \\xNN, control,
    direction and other invisible characters as \\n, \\t or \\uNNNN, and backslashes doubled."""
    if path.isprintable() and "\\" not in path:
        return path
    out: list[str] = []
    for char in path:
        category = unicodedata.category(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif category == "Cs" and 0xDC80 <= ord(char) <= 0xDCFF:
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif category in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)
