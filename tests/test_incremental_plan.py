"""Replanning after a save touches only what changed, and gives what planning it all gives.

Random sequences of edits, new files, deletions and time passing (across the hot window),
with cache entries alive or not, on corpora split into shards: the layout planned from
the paths that changed equals the layout planned with every shard looked at again, and a
shard none of whose documents changed keeps its plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.cache.history import History
from corpus_cache.corpus.changes import document_changes
from corpus_cache.corpus.documents import Document
from corpus_cache.plan.layout import Layout, plan_corpus, safe_minimum
from corpus_cache.plan.shards import _assign, _kept_assignment
from corpus_cache.plan.stability import HOT_WINDOW, DocInfo

NOW = 2_000_000_000.0
FOLDERS = ["a", "b", "c/d"]

paths = st.builds(lambda f, n: f"{f}/doc-{n:02d}.md", st.sampled_from(FOLDERS), st.integers(0, 40))
steps = st.one_of(
    st.tuples(st.just("edit"), paths, st.integers(50, 3_000)),
    st.tuples(st.just("new"), paths, st.integers(50, 3_000)),
    st.tuples(st.just("delete"), paths, st.just(0)),
    st.tuples(st.just("wait"), st.just(""), st.sampled_from([60, 3_600, int(HOT_WINDOW) + 1])),
    st.tuples(st.just("reweigh"), paths, st.integers(0, 5)),  # an edit elsewhere, as seen here
)


def plan(
    docs: dict[str, DocInfo], now: float, previous: Layout | None, live: dict[int, tuple[int, ...]],
    changed: set[str] | None = None, error: float = 0.0,
) -> Layout:  # fmt: skip
    return plan_corpus(
        [docs[p] for p in sorted(docs)], min_cacheable_tokens=1_024, instructions_tokens=300,
        budget_tokens=12_000, now=now, previous=previous, live=live, changed=changed,
        estimate_error=error,
    )  # fmt: skip


def alive(layout: Layout, picks: list[int]) -> dict[int, tuple[int, ...]]:
    """Some anchors of each shard, as if their cache entries were alive."""
    live: dict[int, tuple[int, ...]] = {}
    for shard, pick in zip(layout.shards, picks, strict=False):
        anchors = shard.plan.anchors
        if anchors and pick:
            live[shard.number] = tuple(a for i, a in enumerate(anchors) if pick >> i & 1)
    return live


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(paths, st.integers(50, 3_000), min_size=1, max_size=30),
    st.lists(
        st.tuples(
            st.lists(steps, max_size=4),
            st.lists(st.integers(0, 15)),
            st.sampled_from([0.0, 0.0, 0.0, 0.1, 0.25]),  # how far the figures are estimates
        ),
        max_size=8,
    ),
)
def test_a_replan_from_the_paths_changed_is_the_replan_of_every_shard(
    first: dict[str, int], rounds: list[tuple[list[tuple[str, str, int]], list[int], float]]
) -> None:
    now = NOW
    docs = {
        p: DocInfo(p, tokens, f"k0-{p}", now - 90 * 86_400, first_seen=now - 90 * 86_400)
        for p, tokens in first.items()
    }
    layout = plan(docs, now, None, {})
    for n, (batch, picks, error) in enumerate(rounds):
        changed: set[str] = set()
        for kind, path, value in batch:
            if kind == "wait":
                now += value
            elif kind == "delete" and path in docs:
                del docs[path]
                changed.add(path)
            elif kind == "reweigh" and path in docs:
                docs[path] = replace(docs[path], edit_weight=value / 5)
            elif kind in ("edit", "new") and (kind == "new") != (path in docs):
                before = docs.get(path)
                edits = before.edits + 1 if before else 0
                seen = before.first_seen if before else now
                docs[path] = DocInfo(path, value, f"k{n}-{value}-{path}", now, edits, seen)
                changed.add(path)
        live = alive(layout, picks)
        everything = plan(docs, now, layout, live, error=error)
        assert plan(docs, now, layout, live, changed, error) == everything
        layout = everything


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(paths, st.integers(50, 3_000), min_size=2, max_size=30), paths)
def test_a_shard_whose_documents_did_not_change_keeps_its_plan(
    first: dict[str, int], edited: str
) -> None:
    docs = {p: DocInfo(p, tokens, f"k-{p}", NOW - 3_600, first_seen=NOW - 3_600)
            for p, tokens in first.items()}  # fmt: skip
    before = plan(docs, NOW, None, {})
    docs[edited] = DocInfo(edited, 700, "edited", NOW + 60, 1, NOW - 3_600)
    after = plan(docs, NOW + 60, before, {})
    plans = {shard.number: shard.plan for shard in before.shards}
    for shard in after.shards:
        old = plans.get(shard.number)
        if old is not None and edited not in old.order and set(old.order) == set(shard.plan.order):
            assert shard.plan is old


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(paths, st.integers(50, 3_000), min_size=1, max_size=30))
def test_figures_less_certain_than_when_planned_plan_every_shard_again(
    first: dict[str, int],
) -> None:
    docs = {p: DocInfo(p, tokens, f"k-{p}", NOW - 3_600, first_seen=NOW - 3_600)
            for p, tokens in first.items()}  # fmt: skip
    before = plan(docs, NOW, None, {})
    after = plan(docs, NOW + 60, before, {}, changed=set(), error=0.25)
    floor = safe_minimum(1_024, 300, 0.25)
    assert all(shard.plan.floor == floor for shard in after.shards)


@given(
    st.dictionaries(paths, st.integers(50, 5_000), max_size=30),
    st.dictionaries(paths, st.integers(0, 3), max_size=30),
)
def test_keeping_the_assignment_gives_what_assigning_anew_gives(
    tokens: dict[str, int], previous: dict[str, int]
) -> None:
    fitting = [DocInfo(p, t, p, NOW) for p, t in sorted(tokens.items())]
    kept = _kept_assignment(fitting, 9_000, previous)
    if kept is not None:
        assert kept == _assign(fitting, 9_000, previous)


def document(path: str, text: str) -> Document:
    return Document.from_text(path, text, size=len(text), mtime_ns=0)


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from(["x", "y"]), max_size=8),
    st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from(["x", "y"]), max_size=8),
)
def test_changes_between_two_snapshots_are_found_side_by_side(
    old: dict[str, str], new: dict[str, str]
) -> None:
    before = [document(p, old[p]) for p in sorted(old)]
    shared = {d.path: d for d in before}
    after = [shared[p] if old.get(p) == new[p] else document(p, new[p]) for p in sorted(new)]
    added, removed, changed = document_changes(before, after)
    assert added == tuple(p for p in sorted(new) if p not in old)
    assert removed == tuple(p for p in sorted(old) if p not in new)
    assert changed == tuple(p for p in sorted(new) if p in old and old[p] != new[p])


class _Rebuilt(History):
    """A history that looks at every document each time, as before it looked at the few
    that changed."""

    def observe(
        self, documents: Sequence[Document], tokens: Mapping[str, int], now: float
    ) -> list[DocInfo]:
        self._viewed = None
        return super().observe(documents, tokens, now)


scans = st.lists(
    st.dictionaries(st.sampled_from("abcdefghij"), st.sampled_from(["x", "y", "z"]), max_size=10),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(
    scans,
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.lists(st.sampled_from(["a", "b", ""]), min_size=8, max_size=8),
)
def test_observing_only_what_changed_gives_the_views_observing_everything_gives(
    folders: list[dict[str, str]], compacted: list[bool], estimated_again: list[str]
) -> None:
    looking, rebuilt = History(), _Rebuilt()
    made: dict[tuple[str, str], Document] = {}  # an unchanged file is the same object
    for n, folder in enumerate(folders):
        documents = tuple(
            made.setdefault((p, folder[p]), document(p, f"{p}: {folder[p]}\n"))
            for p in sorted(folder)
        )
        # A figure may move with no edit (an estimate made again): here, those of one path.
        tokens = {d.path: len(d.text) + n * (d.path == estimated_again[n]) for d in documents}
        now = NOW + 60 * n
        assert looking.observe(documents, tokens, now) == rebuilt.observe(documents, tokens, now)
        if compacted[n]:
            assert looking.doc_infos(documents, tokens) == rebuilt.doc_infos(documents, tokens)
