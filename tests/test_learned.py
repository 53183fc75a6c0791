"""Exact token figures learned from the usage of requests (api/learned.py): properties over
any order of documents, any breakpoints observed and any counts already known, on made-up
counts and on the emulator's own accounting (its counts are the truth in tests)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_cache.api.learned import Observed, head_from, resolve, runs, shares
from corpus_cache.api.request import INSTRUCTIONS, document_block
from corpus_cache.corpus.documents import Document
from corpus_cache.emulator.prompt import parse_count_tokens_request, parse_messages_request
from corpus_cache.emulator.prompt_cache import PromptCache
from corpus_cache.models.catalog import load_catalog
from support.prompts import words

CATALOG = load_catalog()
MODEL = "claude-sonnet-4-6"
PROBE = {"type": "text", "text": "?"}


@st.composite
def prompts(draw: st.DrawFn) -> tuple[dict[str, int], int, list[Observed], dict[str, int], bool]:
    """True counts, a head, the prefixes a few requests observed (in one order, or in two
    orders after a replan), the counts known before, and whether the head is known."""
    n = draw(st.integers(1, 12))
    truth = {f"doc-{i}": draw(st.integers(1, 5_000)) for i in range(n)}
    head = draw(st.integers(1, 3_000))
    orders = [list(truth)]
    if draw(st.booleans()):
        orders.append(draw(st.permutations(list(truth))))
    observed = []
    for order in orders:
        for end in draw(st.lists(st.integers(1, n), max_size=6)):
            keys = tuple(order[:end])
            observed.append(Observed(keys, head + sum(truth[k] for k in keys)))
    known = {k: truth[k] for k in truth if draw(st.booleans())}
    return truth, head, observed, known, draw(st.booleans())


@given(prompts())
def test_every_figure_learned_from_usage_is_the_true_count(
    drawn: tuple[dict[str, int], int, list[Observed], dict[str, int], bool],
) -> None:
    truth, head, observed, known, head_known = drawn
    learned = resolve(runs(observed, head if head_known else None), known)
    assert learned.conflicts == 0
    for key, tokens in learned.exact.items():
        assert key not in known
        assert tokens == truth[key]
    for keys, tokens in learned.sums.items():
        assert len(keys) >= 2
        assert not set(keys) & (set(known) | set(learned.exact))
        assert tokens == sum(truth[k] for k in keys)


@given(prompts())
def test_a_document_alone_between_two_breakpoints_observed_is_learned(
    drawn: tuple[dict[str, int], int, list[Observed], dict[str, int], bool],
) -> None:
    truth, head, observed, known, _ = drawn
    order = list(truth)
    lengths = {len(o.keys) for o in observed if o.keys == tuple(order[: len(o.keys)])}
    learned = resolve(runs(observed, head), known)
    for end in lengths:
        if end == 1 or end - 1 in lengths:  # one document since the head or the last prefix
            assert order[end - 1] in known or learned.exact[order[end - 1]] == truth[order[end - 1]]


def test_a_prefix_under_the_minimum_teaches_nothing() -> None:
    # Nothing cached, nothing read: read + creation is 0, not the prefix.
    assert resolve(runs([Observed(("a",), 0)], head=10), {}) == resolve([], {})


def test_a_figure_that_contradicts_the_counts_known_is_not_taken() -> None:
    observed = [Observed(("a", "b"), 110), Observed(("a", "b", "c"), 115)]
    learned = resolve(runs(observed, head=10), {"a": 60, "b": 50})
    assert learned.exact == {"c": 5}
    assert learned.conflicts == 1  # a + b = 100, not 60 + 50


@given(
    st.dictionaries(st.text(min_size=1, max_size=4), st.floats(0, 1e6), min_size=1),
    st.integers(0, 10**7),
)
def test_a_known_sum_is_shared_among_its_documents_exactly(
    weights: dict[str, float], extra: int
) -> None:
    total = len(weights) + extra
    split = shares(total, weights)
    assert set(split) == set(weights)
    assert sum(split.values()) == total
    assert min(split.values()) >= 1


def counted(content: list[dict[str, Any]], drift: int, system: str | None = None) -> int:
    """What the emulator's count_tokens says of one user message of `content`, with `drift`
    tokens of its own (the API's counts "may include a few system-added tokens")."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
    if system is not None:
        body["system"] = [{"type": "text", "text": system}]
    return parse_count_tokens_request(body, CATALOG).total_tokens + drift


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 900), min_size=1, max_size=10),
    st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True), max_size=5),
    st.integers(0, 12),
    st.data(),
)
def test_what_the_emulator_bills_teaches_only_its_own_counts(
    sizes: list[int], breakpoints: list[list[int]], drift: int, data: st.DataObject
) -> None:
    """Documents counted as api/tokens counts them (a difference of two counts, so a count's
    own drift cancels), requests laid out as the request builder lays them out, breakpoints
    anywhere: the head that usage shows is the emulator's, and every figure learned from
    what it bills is its count."""
    texts = [words(n, seed=i) + "\n" for i, n in enumerate(sizes)]
    docs = [
        Document.from_text(f"doc-{i}.md", text, size=len(text), mtime_ns=0)
        for i, text in enumerate(texts)
    ]
    blocks = [document_block(doc) for doc in docs]
    baseline = counted([PROBE], drift)
    truth = {
        doc.path: counted([block, PROBE], drift) - baseline
        for doc, block in zip(docs, blocks, strict=True)
    }
    system = {"type": "text", "text": INSTRUCTIONS}
    probed = parse_messages_request(
        {"model": MODEL, "max_tokens": 0, "system": [system],
         "messages": [{"role": "user", "content": [PROBE]}]}, CATALOG,
    ).prompt  # fmt: skip
    # The emulator's head: the prompt through the probe, less the probe's block.
    head = probed.positions[1].cumulative_tokens - (counted([PROBE, PROBE], drift) - baseline)
    cache = PromptCache()
    observed = []
    for marked in breakpoints:
        marked = sorted(m for m in marked if m < len(docs)) or [0]
        content = [dict(block) for block in blocks]
        for m in marked:
            content[m]["cache_control"] = {"type": "ephemeral"}
        body = {
            "model": MODEL, "max_tokens": 0, "system": [system],
            "messages": [{"role": "user", "content": [*content, {"type": "text", "text": "Q?"}]}],
        }  # fmt: skip
        outcome = cache.account("ws", parse_messages_request(body, CATALOG).prompt, 0.0)
        cache.begin("ws", outcome)
        keys = tuple(doc.path for doc in docs[: marked[-1] + 1])
        observed.append(Observed(keys, outcome.read_tokens + outcome.creation_tokens))
    known = {p: n for p, n in truth.items() if data.draw(st.booleans())}
    shown = head_from(observed, known)
    assert shown in (None, head)
    learned = resolve(runs(observed, shown), known)
    assert learned.conflicts == 0
    for path, tokens in learned.exact.items():
        assert tokens == truth[path]
    for paths, tokens in learned.sums.items():
        assert tokens == sum(truth[p] for p in paths)
