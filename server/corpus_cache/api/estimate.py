"""A local estimate of a document's tokens, calibrated against a few exact counts. Pure.

Counting every file with `count_tokens` on a cold start costs a call per file, and token
counting has its own per-minute limit (100 requests at tier 1). So a document is *sketched*
instead: its kind of text (prose, code, CJK, another script, data) and a prior, the tokens
fixed per-character weights give it. Claude's tokenizers are not published, and any other
tokenizer (tiktoken, a Hugging Face one) would need its vocabulary downloaded and would
still need calibrating per model, so the prior is only a shape: a ratio per kind, fitted
on a small sample of exact counts for one model and backend, turns it into tokens.

The error bound of a kind is measured on its samples (the largest relative error seen,
widened by `SAFETY`, never below `MIN_ERROR`; `FEW_SAMPLES_ERROR` with fewer than
`MIN_SAMPLES`): it is a measurement, not a proof. The planner works with the upper end of
the bound (budget, spending) and keeps every breakpoint above the minimum even at its
lower end (plan/layout.py).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

KINDS = ("prose", "code", "cjk", "other-script", "data")
SKETCH_VERSION = 1  # of `sketch`: stored sketches of another version are made again
GROUP = "group:"  # a sample summing several documents: it calibrates the ratio, not the error

MIN_SAMPLES = 3  # samples of a kind before its error bound is measured rather than assumed
SAMPLES_PER_START = 20  # at most this many documents are counted to calibrate one start
MIN_ERROR = 0.10
FEW_SAMPLES_ERROR = 0.35
MAX_ERROR = 0.60
SAFETY = 1.5  # the bound is the largest error seen on the samples, times this
DOCUMENT_FRAMING = 8.0  # tokens a document block adds around its text (title aside)

_WORD = re.compile(r"[A-Za-z]+")
_DIGIT = re.compile(r"[0-9]")
_PUNCT = re.compile(r"[!-/:-@\[-`{-~]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_INDENT = re.compile(r"[ \t]{4,}")
_NEWLINE = re.compile(r"\n")


@dataclass(frozen=True)
class Sketch:
    """What the estimate knows of a document: its kind of text and its prior (tokens by
    fixed per-character weights, before calibration)."""

    kind: str
    prior: float


def _prior(text: str) -> tuple[float, dict[str, int]]:
    words = _WORD.findall(text)
    letters = sum(map(len, words))
    counts = {
        "letters": letters,
        "digits": len(_DIGIT.findall(text)),
        "punct": len(_PUNCT.findall(text)),
        "non_ascii": len(_NON_ASCII.findall(text)),
        "cjk": len(_CJK.findall(text)),
    }
    prior = (
        0.7 * len(words) + letters / 10  # a short word is a token, a long one a few
        + 0.4 * counts["digits"]
        + 0.8 * counts["punct"]
        + 1.0 * counts["cjk"]
        + 0.5 * (counts["non_ascii"] - counts["cjk"])
        + 1.0 * len(_INDENT.findall(text))
        + 0.3 * len(_NEWLINE.findall(text))
    )  # fmt: skip
    return prior, counts


def kind_of(counts: Mapping[str, int]) -> str:
    """The kind of text, by which characters dominate its non-space ones."""
    visible = counts["letters"] + counts["digits"] + counts["punct"] + counts["non_ascii"]
    if not visible:
        return "prose"
    if counts["cjk"] >= 0.2 * visible:
        return "cjk"
    if counts["non_ascii"] - counts["cjk"] >= 0.2 * visible:
        return "other-script"
    if counts["digits"] >= 0.25 * visible:
        return "data"
    if counts["punct"] >= 0.12 * visible:
        return "code"
    return "prose"


def sketch(text: str, title: str) -> Sketch:
    body, counts = _prior(text)
    head, _ = _prior(title)
    return Sketch(kind_of(counts), body + head + DOCUMENT_FRAMING)


@dataclass(frozen=True)
class KindFit:
    ratio: float  # exact tokens per prior token
    error: float  # relative error bound of one document's estimate
    samples: int  # individual documents counted


@dataclass(frozen=True)
class Estimate:
    """A document's tokens are within `tokens` * (1 ± `error`), and so at most `upper`."""

    tokens: int  # the point estimate
    upper: int
    error: float


@dataclass(frozen=True)
class Calibration:
    fits: Mapping[str, KindFit]
    pooled: KindFit  # for a kind never sampled: all samples' ratio, a wide bound

    def fit(self, kind: str) -> KindFit:
        return self.fits.get(kind, self.pooled)

    def estimate(self, sketched: Sketch) -> Estimate:
        fit = self.fit(sketched.kind)
        point = max(1, round(sketched.prior * fit.ratio))
        # A count within the bound is a whole number at most point * (1 + error).
        return Estimate(point, max(point, math.floor(point * (1 + fit.error) + 1e-9)), fit.error)

    def calibrated(self, kind: str) -> bool:
        """Whether `kind` has enough samples of its own not to need more."""
        return kind in self.fits and self.fits[kind].samples >= MIN_SAMPLES


def calibrate(samples: Iterable[tuple[str, float, int]]) -> Calibration:
    """A ratio and an error bound per kind from (kind, prior, exact tokens) samples. A
    sample whose kind starts with `GROUP` sums several documents of the kind after it: it
    counts toward the ratio (weighted by its size, like every sample) but not the bound."""
    by_kind: dict[str, list[tuple[float, int, bool]]] = defaultdict(list)
    for kind, prior, exact in samples:
        if prior <= 0 or exact <= 0:
            continue
        group = kind.startswith(GROUP)
        by_kind[kind.removeprefix(GROUP)].append((prior, exact, group))
    fits = {kind: _fit(rows) for kind, rows in by_kind.items()}
    every = [row for rows in by_kind.values() for row in rows]
    pooled = _fit(every) if every else KindFit(1.0, MAX_ERROR, 0)
    pooled = KindFit(pooled.ratio, max(pooled.error, FEW_SAMPLES_ERROR), 0)
    return Calibration(fits, pooled)


def _fit(rows: Sequence[tuple[float, int, bool]]) -> KindFit:
    ratio = sum(exact for _, exact, _ in rows) / sum(prior for prior, _, _ in rows)
    single = [(prior, exact) for prior, exact, group in rows if not group]
    worst = max((abs(exact / (prior * ratio) - 1) for prior, exact in single), default=0.0)
    error = max(MIN_ERROR, SAFETY * worst)
    if len(single) < MIN_SAMPLES:
        error = max(error, FEW_SAMPLES_ERROR)
    return KindFit(ratio, min(error, MAX_ERROR), len(single))


K = TypeVar("K", bound=Hashable)


def choose_samples(
    sketches: Mapping[K, Sketch],
    have: Mapping[str, int],
    budget: int = SAMPLES_PER_START,
) -> list[K]:
    """Which documents to count so that every kind of text present is calibrated, at most
    `budget` of them. `have`: the samples of each kind already stored (a kind with
    `MIN_SAMPLES` needs none; after one start every kind present has them, so a restart
    counts nothing). A kind needing samples gets `MIN_SAMPLES` at least, and the rest of the
    budget goes by each kind's share of the tokens; within a kind the documents are spread
    over its token mass (the middle of equal slices of it, smallest documents first), so
    the large documents that carry most of the tokens, and the sizes between, are counted.
    Deterministic."""
    by_kind: dict[str, list[tuple[K, Sketch]]] = defaultdict(list)
    for key, sketched in sketches.items():
        by_kind[sketched.kind].append((key, sketched))
    needing = sorted(k for k in by_kind if have.get(k, 0) < MIN_SAMPLES)
    if not needing or budget <= 0:
        return []
    mass = {k: sum(s.prior for _, s in by_kind[k]) for k in needing}
    want = {k: min(len(by_kind[k]), MIN_SAMPLES - have.get(k, 0)) for k in needing}
    while sum(want.values()) > budget:  # more kinds than the budget covers: the largest first
        smallest = min((k for k in needing if want[k]), key=lambda k: (mass[k], k))
        want[smallest] -= 1
    spare = budget - sum(want.values())
    total = sum(mass.values()) or 1.0
    for k in sorted(needing, key=lambda k: (-mass[k], k)):
        extra = min(spare, int(spare * mass[k] / total), len(by_kind[k]) - want[k])
        want[k] += extra
    spare = budget - sum(want.values())
    for k in sorted(needing, key=lambda k: (-mass[k], k)):
        extra = min(spare, len(by_kind[k]) - want[k])
        want[k] += extra
        spare -= extra
    chosen: list[K] = []
    for k in needing:
        chosen.extend(_spread(by_kind[k], want[k]))
    return chosen


def _spread(items: Sequence[tuple[K, Sketch]], count: int) -> list[K]:
    """`count` of `items`, at the middles of equal slices of their cumulative prior."""
    if count <= 0:
        return []
    ordered = sorted(items, key=lambda item: (item[1].prior, str(item[0])))
    total = sum(s.prior for _, s in ordered)
    chosen: list[K] = []
    taken: set[int] = set()
    running, index = 0.0, 0
    for slot in range(count):
        target = total * (slot + 0.5) / count
        while index < len(ordered) - 1 and running + ordered[index][1].prior < target:
            running += ordered[index][1].prior
            index += 1
        pick = index
        while pick in taken and pick < len(ordered) - 1:
            pick += 1
        while pick in taken:
            pick -= 1
        taken.add(pick)
        chosen.append(ordered[pick][0])
    return chosen
