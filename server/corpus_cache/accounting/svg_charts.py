"""Small inline SVG charts, generated as strings: no JavaScript, fonts or network. Pure.

Every chart is an `<svg class="chart" data-chart=...>` whose `<title>` names it; every
series or segment carries `data-series`, so a test (or a script) can find them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

WIDTH = 1120
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"'
AXIS = "#94a3b8"
GRID = "#e2e8f0"
TEXT = "#475569"

Format = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    name: str  # shown in the legend; `key` goes in data-series
    key: str
    points: tuple[tuple[float, float], ...]
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class Segment:
    name: str
    key: str
    color: str


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round numbers covering [low, high], about `count` of them."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
               43200, 86400, 172800, 604800)  # fmt: skip


def time_ticks(low: float, high: float, count: int = 6) -> tuple[list[float], Format]:
    """Round moments between low and high, and how to label them (local time)."""
    span = max(high - low, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= count), _TIME_STEPS[-1])
    offset = datetime.fromtimestamp(low).astimezone().utcoffset()
    shift = offset.total_seconds() if offset is not None else 0.0
    first = math.ceil((low + shift) / step) * step - shift
    ticks = [first + i * step for i in range(int((high - first) // step) + 1)]
    if step < 60:
        pattern = "%H:%M:%S"
    elif step < 86400 and span < 86400:
        pattern = "%H:%M"
    elif step < 86400:
        pattern = "%b %d %H:%M"
    else:
        pattern = "%b %d"
    return ticks, lambda t: datetime.fromtimestamp(t).astimezone().strftime(pattern)


def money(value: float, scale: float | None = None) -> str:
    scale = abs(value) if scale is None else scale
    digits = 2 if scale >= 10 else 3 if scale >= 0.1 else 4
    return f"{'-' if value < 0 else ''}${abs(value):,.{digits}f}"


def _open(kind: str, title: str, height: int, desc: str = "") -> list[str]:
    ident = f"chart-{kind}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{kind}" '
        f'viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-labelledby="{ident}-title" {FONT} font-size="13">',
        f'<title id="{ident}-title">{escape(title)}</title>',
    ]
    if desc:
        parts.append(f"<desc>{escape(desc)}</desc>")
    return parts


def _legend(items: Sequence[tuple[str, str, bool]], x: float, y: float) -> list[str]:
    parts = []
    for name, color, dashed in items:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        parts.append(
            f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 22:.1f}" y2="{y:.1f}" stroke="{color}" '
            f'stroke-width="4"{dash}/>'
        )
        parts.append(f'<text x="{x + 28:.1f}" y="{y + 4:.1f}" fill="{TEXT}">{escape(name)}</text>')
        x += 40 + 7.5 * len(name)
    return parts


def step_chart(
    kind: str,
    title: str,
    series: Sequence[Series],
    *,
    y_format: Format,
    between: tuple[str, str, str, str] | None = None,
    below: tuple[str, str] | None = None,
    height: int = 340,
) -> str:
    """Cumulative lines over time, drawn as steps (the value changes at each point).
    `between` = (lower key, upper key, fill colour, legend name) shades the gap where the
    upper line is above; `below` = (fill colour, legend name) shades it where it is not
    (spent above uncached: a loss, not a saving)."""
    left, right, top, bottom = 86.0, 24.0, 40.0, 36.0
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    parts = _open(kind, title, height)
    if not xs:
        parts.append(f'<text x="{left}" y="{height / 2}" fill="{TEXT}">No requests yet.</text>')
        return "\n".join([*parts, "</svg>"])
    x_low, x_high = min(xs), max(xs)
    if x_high - x_low < 1:
        x_low, x_high = x_low - 1, x_high + 1
    y_ticks = nice_ticks(0.0, max(ys) or 1.0)
    y_high = y_ticks[-1]
    plot_w, plot_h = WIDTH - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + plot_h - y / y_high * plot_h

    for tick in y_ticks:
        parts.append(
            f'<line x1="{left}" y1="{py(tick):.1f}" x2="{WIDTH - right}" y2="{py(tick):.1f}" '
            f'stroke="{GRID}"/>'
        )
        parts.append(
            f'<text x="{left - 8}" y="{py(tick) + 4:.1f}" text-anchor="end" fill="{TEXT}">'
            f"{escape(y_format(tick))}</text>"
        )
    x_ticks, x_format = time_ticks(x_low, x_high)
    for tick in x_ticks:
        parts.append(
            f'<line x1="{px(tick):.1f}" y1="{top + plot_h}" x2="{px(tick):.1f}" '
            f'y2="{top + plot_h + 5}" stroke="{AXIS}"/>'
        )
        parts.append(
            f'<text x="{px(tick):.1f}" y="{top + plot_h + 20}" text-anchor="middle" '
            f'fill="{TEXT}">{escape(x_format(tick))}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{WIDTH - right}" y2="{top + plot_h}" '
        f'stroke="{AXIS}"/>'
    )

    def steps(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = [(points[0][0], 0.0)]
        for x, y in points:
            out.append((x, out[-1][1]))
            out.append((x, y))
        out.append((x_high, out[-1][1]))
        return out

    by_key = {s.key: s for s in series}
    legend: list[tuple[str, str, bool]] = []
    losses = False
    if between is not None and between[0] in by_key and between[1] in by_key:
        low_points, high_points = by_key[between[0]].points, by_key[between[1]].points
        gained, lost = _gaps(low_points, high_points, x_high, px, py)
        if below is None or (not gained and not lost):  # one shade for the whole gap
            lower, upper = steps(low_points), steps(high_points)
            outline = [*upper, *reversed(lower)]
            gained = [
                " ".join(
                    f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}"
                    for i, (x, y) in enumerate(outline)
                )
                + " Z"
            ]
            lost = []
        parts.append(
            f'<path data-series="{escape(between[3].lower())}" d="{" ".join(gained)}" '
            f'fill="{between[2]}" stroke="none"/>'
        )
        if below is not None and lost:
            losses = True
            parts.append(
                f'<path data-series="{escape(below[1].lower())}" d="{" ".join(lost)}" '
                f'fill="{below[0]}" stroke="none"/>'
            )
    for s in series:
        if not s.points:
            continue
        path = steps(s.points)
        d = " ".join(
            f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(path)
        )
        dash = ' stroke-dasharray="7 5"' if s.dashed else ""
        parts.append(
            f'<path data-series="{escape(s.key)}" d="{d}" fill="none" stroke="{s.color}" '
            f'stroke-width="2.5" stroke-linejoin="round"{dash}/>'
        )
        last_x, last_y = s.points[-1]
        parts.append(
            f'<circle cx="{px(last_x):.1f}" cy="{py(last_y):.1f}" r="4" fill="{s.color}"/>'
        )
        legend.append((s.name, s.color, s.dashed))
    if between is not None:
        legend.append((between[3], between[2], False))
    if below is not None and losses:
        legend.append((below[1], below[0], False))
    parts.extend(_legend(legend, left, 18))
    parts.append("</svg>")
    return "\n".join(parts)


def _gaps(
    low: Sequence[tuple[float, float]],
    high: Sequence[tuple[float, float]],
    end: float,
    px: Callable[[float], float],
    py: Callable[[float], float],
) -> tuple[list[str], list[str]]:
    """Rectangles (path pieces) between two step lines measured at the same moments: those
    where `high` is above `low`, and those where it is below. Empty when the moments differ."""
    if len(low) != len(high) or any(a[0] != b[0] for a, b in zip(low, high, strict=True)):
        return [], []
    above: list[str] = []
    under: list[str] = []
    for i, ((x0, lo), (_, hi)) in enumerate(zip(low, high, strict=True)):
        x1 = low[i + 1][0] if i + 1 < len(low) else end
        if x1 <= x0 or hi == lo:
            continue
        top, bottom = max(hi, lo), min(hi, lo)
        piece = (
            f"M{px(x0):.1f},{py(top):.1f} L{px(x1):.1f},{py(top):.1f} "
            f"L{px(x1):.1f},{py(bottom):.1f} L{px(x0):.1f},{py(bottom):.1f} Z"
        )
        (above if hi > lo else under).append(piece)
    return above, under


def column_chart(
    kind: str,
    title: str,
    columns: Sequence[tuple[str, float, str]],
    *,
    y_max: float,
    y_format: Format,
    series_key: str,
    color: Callable[[float], str],
    note: str = "",
    height: int = 300,
) -> str:
    """Vertical bars, one per (label, value, tooltip)."""
    left, right, top, bottom = 64.0, 24.0, 34.0, 44.0
    parts = _open(kind, title, height)
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    if note:
        parts.append(f'<text x="{left}" y="18" fill="{TEXT}">{escape(note)}</text>')
    for tick in nice_ticks(0.0, y_max, 4):
        if tick > y_max + 1e-9:
            continue
        y = top + plot_h - tick / y_max * plot_h
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - right}" y2="{y:.1f}" stroke="{GRID}"/>'
        )
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" fill="{TEXT}">'
            f"{escape(y_format(tick))}</text>"
        )
    if not columns:
        parts.append(f'<text x="{left + 10}" y="{top + plot_h / 2}" fill="{TEXT}">No data.</text>')
        return "\n".join([*parts, "</svg>"])
    slot = plot_w / len(columns)
    bar = min(64.0, slot * 0.7)
    every = max(1, math.ceil(len(columns) / 14))
    for index, (label, value, tip) in enumerate(columns):
        h = max(0.0, min(value, y_max)) / y_max * plot_h
        x = left + index * slot + (slot - bar) / 2
        parts.append(
            f'<rect data-series="{escape(series_key)}" x="{x:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{bar:.1f}" height="{max(h, 1.5):.1f}" rx="3" fill="{color(value)}">'
            f"<title>{escape(tip)}</title></rect>"
        )
        if len(columns) <= 24:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h - h - 6:.1f}" text-anchor="middle" '
                f'fill="{TEXT}" font-size="12">{escape(y_format(value))}</text>'
            )
        if index % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 18}" text-anchor="middle" '
                f'fill="{TEXT}" font-size="12">{escape(label)}</text>'
            )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{WIDTH - right}" y2="{top + plot_h}" '
        f'stroke="{AXIS}"/>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def stacked_bars(
    kind: str,
    title: str,
    rows: Sequence[tuple[str, Sequence[float]]],
    segments: Sequence[Segment],
    *,
    value_format: Format,
    label_width: float = 170.0,
) -> str:
    """Horizontal bars, one per (label, values), each split into `segments`."""
    bar_h, gap, top = 26.0, 14.0, 40.0
    height = int(top + max(1, len(rows)) * (bar_h + gap) + 10)
    parts = _open(kind, title, height)
    parts.extend(_legend([(s.name, s.color, False) for s in segments], label_width, 18))
    total_max = max((sum(values) for _, values in rows), default=0.0) or 1.0
    plot_w = WIDTH - label_width - 130
    if not rows:
        parts.append(f'<text x="{label_width}" y="{top + 18}" fill="{TEXT}">No data.</text>')
    for index, (label, values) in enumerate(rows):
        y = top + index * (bar_h + gap)
        parts.append(
            f'<text x="{label_width - 12}" y="{y + bar_h / 2 + 5:.1f}" text-anchor="end" '
            f'fill="#0f172a">{escape(label)}</text>'
        )
        x = label_width
        for segment, value in zip(segments, values, strict=True):
            w = value / total_max * plot_w
            if w <= 0:
                continue
            parts.append(
                f'<rect data-series="{escape(segment.key)}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{w:.1f}" height="{bar_h}" fill="{segment.color}">'
                f"<title>{escape(f'{label}: {segment.name} {value_format(value)}')}</title></rect>"
            )
            if w > 70:
                parts.append(
                    f'<text x="{x + w / 2:.1f}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="middle" '
                    f'fill="#ffffff" font-size="12">{escape(value_format(value))}</text>'
                )
            x += w
        parts.append(
            f'<text x="{x + 8:.1f}" y="{y + bar_h / 2 + 5:.1f}" fill="{TEXT}">'
            f"{escape(value_format(sum(values)))}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)
