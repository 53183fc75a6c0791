"""The text the content rules read: the raw text, and the same text as a reader would see
it once the ways of quoting, commenting, splitting and wrapping are undone. Pure.

A key pasted into a document is rarely bare. It is quoted in a reply (`> `), commented out
(`# `, `//`, `--`, `;`, ` * `, `%`, `<!--`), in a diff (`+`, `-`), joined with `<br>` in
HTML, written as string pieces (`"-----BEGIN " + "RSA PRIVATE KEY-----"`, one piece per
line with `\\n` escapes, Python's adjacent literals, SQL's `||`, PHP's `.`), or rewrapped
to 32 columns or any width. The rules (secret_content.py) run on three views:

- raw: the text as it is;
- lines: each line (and each part of a line between `<br>`, `</p>`, a literal `\\n` and
  the like) without its quote and comment marks and without the quotes, commas, `+` and
  escapes around a string piece; then wrapped lines joined: a run of two or more lines
  that are each one unbroken token, one of them 16 or more long, is one token, together
  with the line before it if that line ends in a token character (where the token
  began); a single token line goes on the line before it if that one is 16 or more
  characters long and ends in a token that makes 16 or more characters with it (a token
  cut once);
- strings: the contents of string literals that are joined by `+`, `.`, `&`, `||`,
  commas, parentheses, line breaks or nothing, concatenated, with `\\n`, `\\r` and `\\t`
  escapes dropped.

Every view keeps, for each of its pieces, the line of the original text it came from, so
a finding names the line a reader will find it on.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

MIN_WRAP_WIDTH = 16  # narrower "wrapping" is a column of words, not a token cut to fit

_BREAKS = re.compile(
    r"<br\s*/?>|</?(?:p|div|pre|code|li|tr|td|span)\b[^>\n]*>|&lt;br\s*/?&gt;"
    r"|&#0*10;|&#x0*a;|&newline;",
    re.IGNORECASE,
)
_MARK = (
    r"(?:[ \t]*(?:>|#+|//+|--(?!---)|;+|\*+(?!/)|/\*+|%+|!+|::|(?i:rem)\b|<!--|\||\++|-(?!-)))+"
    r"[ \t]*"
)  # quote and comment marks, a diff's + and -; never the five dashes of "-----BEGIN"
# Patterns for line starts begin with the line break itself (the text gets one in front):
# the engine then jumps from one break to the next instead of trying `^` at every character.
_MARKS_OF_LINES = re.compile(r"\n" + _MARK)
_ESCAPED_BREAK = re.compile(r"\\n")
# What opens and closes a string piece on its line. The closings are found in the reversed
# text, after a line break, for the same reason.
_PIECE_OPENINGS = re.compile(r"\n(?:[ \t\"'`(\[{,+]|[rRbBuUfF]{1,2}(?=[\"']))+")
_PIECE_CLOSINGS_REVERSED = re.compile(r"\n(?:[nrt]\\|/\*|>--|[ \t\"'`)\]},;+|\\])+")
# Runs of lines that are each one token (trailing spaces aside: Markdown's hard breaks).
_TOKEN_LINES = re.compile(r"\n([A-Za-z0-9+/=_-]+[ \t]*(?:\n[A-Za-z0-9+/=_-]+[ \t]*)*)(?![^\n])")
_TOKEN_CHAR_STRING = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-"
_TOKEN_CHARS = frozenset(_TOKEN_CHAR_STRING)
_LITERAL = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\\n]|\\.)*`")
_JOINER = re.compile(r"[\s+.&|,()\\]*(?:[rRbBuUfF]{1,2})?")
# A quote, what may join two literals, a quote: text without it (or a backslash) has no
# string view, and is spared a look at each of its literals.
_JOINED_QUOTES = re.compile(r"[\"'`][\s+.&|,()\\]*[rRbBuUfF]{0,2}[\"'`]")
_ESCAPES = re.compile(r"\\[nrt]")


@dataclass(frozen=True)
class View:
    """Text for the rules, and how to find the original line of a position in it: either by
    counting line breaks (through `table` if lines were split, and adding back `removed`
    ones), or from `starts`, the offset where each piece from line `lines[i]` begins."""

    text: str
    table: tuple[int, ...] = ()  # the original line (1-based) of each line of a split text
    removed: tuple[int, ...] = ()  # offsets where a line break was taken out (a wrap)
    starts: tuple[int, ...] = ()
    lines: tuple[int, ...] = ()

    def line_of(self, offset: int) -> int:
        if self.starts:
            return self.lines[bisect.bisect_right(self.starts, offset) - 1]
        index = self.text.count("\n", 0, offset) + bisect.bisect_right(self.removed, offset)
        return self.table[index] if self.table else index + 1


def views(text: str) -> list[View]:
    """The raw text, then the lines view and the strings view where they differ from it."""
    out = [View(text)]
    # The literal checks first: a search for either pattern scans every character.
    split, split_table = _split(text, _BREAKS, ()) if "<" in text or "&" in text else (text, ())
    marked = _at_line_starts(_MARKS_OF_LINES, split)
    bare, table = (
        _split(marked, _ESCAPED_BREAK, split_table) if "\\n" in marked else (marked, split_table)
    )
    opened = _at_line_starts(_PIECE_OPENINGS, bare)
    closed = _at_line_starts(_PIECE_CLOSINGS_REVERSED, opened[::-1])[::-1]
    joined, removed = _unwrapped(closed)
    # Without a line split or joined, this view differs from the raw text only at the ends
    # of lines, which changes no single-line match (a mark or a quote is no letter or digit
    # to extend a token): only a private key's block spans lines.
    if table or removed or (joined != text and "PRIVATE KEY" in text):
        out.append(View(joined, table, removed))
    strings = _strings(View(marked, split_table))
    if strings.text:
        out.append(strings)
    return out


def _at_line_starts(pattern: re.Pattern[str], text: str) -> str:
    """`text` without what `pattern` (which begins with a line break) finds at line starts."""
    return pattern.sub("\n", "\n" + text)[1:]


def _split(
    text: str, breaks: re.Pattern[str], table: tuple[int, ...]
) -> tuple[str, tuple[int, ...]]:
    """`text` with a line break for each match of `breaks`, and the original line of each
    of its lines (`table` maps the lines of `text` itself; empty: they are the originals)."""
    if breaks.search(text) is None:
        return text, table
    lines: list[str] = []
    numbers: list[int] = []
    for index, line in enumerate(text.split("\n")):
        parts = breaks.split(line)
        lines.extend(parts)
        numbers.extend([table[index] if table else index + 1] * len(parts))
    return "\n".join(lines), tuple(numbers)


def _unwrapped(text: str) -> tuple[str, tuple[int, ...]]:
    """`text` with wrapped tokens joined, and the offsets (in the result) where a line break
    was taken out. Only runs of lines that are each one token are looked at."""
    cuts: list[tuple[int, int]] = []  # spans of `text` to take out: spaces and a line break
    for run in _TOKEN_LINES.finditer("\n" + text):
        start = run.start(1) - 1  # in `text`
        before = text[text.rfind("\n", 0, max(start - 1, 0)) + 1 : start - 1] if start else ""
        lines = run.group(1).split("\n")
        tokens = [line.rstrip(" \t") for line in lines]
        ends: list[tuple[int, int]] = []  # where each line's token ends, where the next begins
        offset = start
        for line, token in zip(lines, tokens, strict=True):
            ends.append((offset + len(token), offset + len(line) + 1))
            offset += len(line) + 1
        before_end = start - 1 - (len(before) - len(before.rstrip(" \t")))
        for index in _glued(before.rstrip(" \t"), [len(token) for token in tokens]):
            cuts.append(ends[index - 1] if index else (before_end, start))
    if not cuts:
        return text, ()
    cuts.sort()
    parts: list[str] = []
    removed: list[int] = []
    previous = length = 0
    for cut_start, cut_end in cuts:
        parts.append(text[previous:cut_start])
        length += cut_start - previous
        removed.append(length)
        previous = cut_end
    parts.append(text[previous:])
    return "".join(parts), tuple(removed)


def _glued(before: str, widths: list[int]) -> list[int]:
    """Which of a run of token lines (by width) go on the line before them without a break.
    A run of two or more with one line of 16 or more is a token cut to fit (at a fixed
    width, or by a wrapper that also breaks after hyphens): all of it, and the line before
    too if that ends in a token character (where the token began). A lone token line goes
    on the line before if that is 16 or more long and its last token and this one are 16
    or more together (a token cut once)."""
    if len(widths) > 1:
        if max(widths) < MIN_WRAP_WIDTH:
            return []
        return list(range(0 if before and before[-1] in _TOKEN_CHARS else 1, len(widths)))
    if len(before) >= MIN_WRAP_WIDTH and _trailing_token(before) + widths[0] >= MIN_WRAP_WIDTH:
        return [0]  # every secret the rules know is longer than MIN_WRAP_WIDTH
    return []


def _trailing_token(line: str) -> int:
    return len(line) - len(line.rstrip(_TOKEN_CHAR_STRING))


def _strings(source: View) -> View:
    """The contents of each run of joined string literals in `source`, one run a line; a
    lone literal only if it had escapes to drop (otherwise the other views have it)."""
    text = source.text
    if "\\" not in text and _JOINED_QUOTES.search(text) is None:
        return View("")
    pieces: list[tuple[str, int]] = []
    run: list[tuple[str, int]] = []
    escapes = False
    end = -1
    index = counted = 0  # lines counted as we go: line_of from the start each time is quadratic
    for match in _LITERAL.finditer(text):
        if not (end >= 0 and _JOINER.fullmatch(text, end, match.start())):
            if len(run) > 1 or escapes:
                pieces.extend(run)
                pieces.append(("\n", run[-1][1]))
            run, escapes = [], False
        index += text.count("\n", counted, match.start())
        counted = match.start()
        body = match.group()[1:-1]
        if "\\" in body:
            dropped = _ESCAPES.sub("", body)
            escapes = escapes or len(dropped) != len(body)
            body = dropped
        run.append((body, source.table[index] if source.table else index + 1))
        end = match.end()
    if len(run) > 1 or escapes:
        pieces.extend(run)
    starts: list[int] = []
    offset = 0
    for piece, _ in pieces:
        starts.append(offset)
        offset += len(piece)
    return View(
        "".join(p for p, _ in pieces), starts=tuple(starts), lines=tuple(n for _, n in pieces)
    )
