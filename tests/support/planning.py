"""Generated corpora and edits for the planner's and the policy's properties."""

from __future__ import annotations

import dataclasses

from hypothesis import strategies as st

from corpus_cache.cache.policy import Prices
from corpus_cache.plan.stability import HOT_WINDOW, DocInfo

NOW = 2_000_000_000.0
DAY = 86_400.0
TOKENS: dict[str, int] = {}  # tokens per path, for the lookback simulator


@st.composite
def corpora(draw: st.DrawFn, max_docs: int = 40) -> list[DocInfo]:
    count = draw(st.integers(1, max_docs))
    docs = []
    for i in range(count):
        age = draw(st.one_of(st.floats(2 * DAY, 900 * DAY), st.floats(0, HOT_WINDOW * 0.9)))
        docs.append(
            DocInfo(
                path=f"{draw(st.sampled_from(['a', 'b', 'docs', 'src']))}/f{i:03d}.md",
                tokens=draw(st.integers(1, 6_000)),
                key=f"k{i}-0",
                last_change=NOW - age,
                first_seen=NOW - age,
            )
        )
    return docs


minimums = st.sampled_from([512, 1024, 2048, 4096])


def edited(docs: list[DocInfo], index: int, at: float) -> list[DocInfo]:
    doc = docs[index]
    changed = dataclasses.replace(doc, key=doc.key + "'", last_change=at, edits=doc.edits + 1)
    return [*docs[:index], changed, *docs[index + 1 :]]


# Claude Sonnet 5.5's cache multipliers.
SONNET_5_5 = Prices(read=0.05, write_5m=1.25, write_1h=2.0)
