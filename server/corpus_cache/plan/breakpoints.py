"""Where to cut an ordered list of documents into cached blocks. Pure.

When a document in block k changes, the next request reads the cache up to the cut
before block k (its entry is alive: see anchors.py) and writes everything after it. With
rates λ (edits per second) the expected rewrite is Σ_blocks Λ_block × (T − P_start), where
Λ_block sums the rates of the block's documents, P_start is the prefix before the block
and T the whole prefix. The cuts minimise that, subject to every cut's prefix reaching the
model's minimum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_CANDIDATES = 1_500  # exact search below this many cut positions; thinned above it


def _candidates(eligible: np.ndarray, hot_from: int) -> np.ndarray:
    if len(eligible) <= MAX_CANDIDATES:
        return eligible
    # Every position near the volatile tail, a token-spread sample before it.
    near = eligible[eligible >= hot_from - MAX_CANDIDATES // 3]
    far = eligible[eligible < hot_from - MAX_CANDIDATES // 3]
    step = max(1, len(far) // (MAX_CANDIDATES - len(near) + 1) + 1)
    return np.unique(np.concatenate([far[::step], near[-(MAX_CANDIDATES // 2) :], far[-1:]]))


def choose_cuts(
    prefix: Sequence[float],
    rates: Sequence[float],
    *,
    minimum: int,
    cuts: int,
    must: int | Sequence[int] | None = None,
    hot_from: int | None = None,
) -> list[int]:
    """Indices i (a cut after document i) of up to `cuts` interior cuts, minimising the
    expected rewrite; `must`, if given, is one of them (a sequence: all of them, up to
    `cuts`, the last ones kept). Exact dynamic program over the candidate positions:
    g[j][c] is the least cost of the blocks up to cut c with j cuts.

    `prefix[i]` is the prompt prefix through document i (instructions included); the last
    document always ends the last block.
    """
    n = len(prefix)
    if n < 2 or cuts <= 0:
        return []
    p = np.asarray(prefix, dtype=np.float64)
    cumulative = np.cumsum(np.asarray(rates, dtype=np.float64))
    total_tokens, total_rate = p[-1], cumulative[-1]
    positions = np.arange(n - 1)
    eligible = positions[p[positions] >= minimum]
    required = sorted(
        {m for m in ([must] if isinstance(must, int) else must or ()) if 0 <= m < n - 1}
    )
    required = required[-cuts:]
    if len(eligible) == 0 or len(required) == cuts:
        return required
    cand = _candidates(eligible, hot_from if hot_from is not None else n)
    cand = np.unique(np.concatenate([cand, np.asarray(required, dtype=cand.dtype)]))
    m = len(cand)
    pc, lc = p[cand], cumulative[cand]
    # Block from cut a (exclusive) to cut b (inclusive) costs (T - P[a]) * (L[b] - L[a]).
    step = (total_tokens - pc)[:, None] * (lc[None, :] - lc[:, None])
    step[np.tri(m, dtype=bool)] = np.inf  # a block ends after it starts
    for required_cut in required:
        k = int(np.searchsorted(cand, required_cut))
        step[:k, k + 1 :] = np.inf  # no block may jump over a required cut
    if required:
        first = np.where(cand <= required[0], total_tokens * lc, np.inf)
    else:
        first = total_tokens * lc
    tail = (total_tokens - pc) * (total_rate - lc)
    g = first
    back: list[np.ndarray] = []
    best_cost = np.inf if required else total_tokens * total_rate  # no cut at all
    best_end, best_j = -1, 0
    for j in range(1, cuts + 1):
        if j > 1:
            through = g[:, None] + step
            back.append(np.argmin(through, axis=0))
            g = through[back[-1], np.arange(m)]
        valid = g if not required else np.where(cand >= required[-1], g, np.inf)
        end = int(np.argmin(valid + tail))
        if valid[end] + tail[end] < best_cost - 1e-18:
            best_cost, best_end, best_j = float(valid[end] + tail[end]), end, j
    if best_end < 0:
        return required
    chosen = [best_end]
    for j in range(best_j, 1, -1):
        chosen.append(int(back[j - 2][chosen[-1]]))
    return sorted(int(cand[c]) for c in chosen)
