"""The probe's pure parts: its searches, its pricing and its conclusions (probe/checks.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.models.catalog import load_catalog, parse_catalog, shipped_table
from corpus_cache.models.limits import load_limits
from corpus_cache.models.pricing import Usage, cost_usd
from corpus_cache.probe import checks
from corpus_cache.probe.checks import ProbePrompt, Sized
from corpus_cache.probe.runner import SEARCH_STEPS

CATALOG = load_catalog()
SONNET = CATALOG.get("claude-sonnet-5-5")


def search_minimum(true_minimum: int, table: int, steps: int = 50) -> list[tuple[int, bool]]:
    """The search run against an API whose minimum is `true_minimum`, lengths exact."""
    tried: list[tuple[int, bool]] = []
    for _ in range(steps):
        not_cached = max((n for n, c in tried if not c), default=None)
        was_cached = min((n for n, c in tried if c), default=None)
        length = checks.next_length(not_cached, was_cached, table)
        if length is None:
            break
        tried.append((length, length >= true_minimum))
    return tried


tables = st.sampled_from([512, 1024, 2048, 4096])


@given(table=tables, true_minimum=st.integers(100, 20_000))
def test_the_minimum_found_brackets_the_true_one_and_matches_only_when_the_table_is_right(
    table: int, true_minimum: int
) -> None:
    tried = search_minimum(true_minimum, table)
    finding = checks.minimum_finding(tried, table)

    assert len(tried) <= SEARCH_STEPS  # the runner's bound ends no search early
    written = finding.override.get("min_cacheable_tokens")
    if finding.verdict == "match":
        assert table * checks.BELOW < true_minimum <= table
    else:
        assert finding.verdict == "mismatch"
        # Never below the true minimum: the product then expects no cache it would not get.
        assert written is not None
        assert true_minimum <= written <= true_minimum * 1.12


@given(table=tables, power=st.integers(5, 13))
def test_a_minimum_that_is_a_power_of_two_is_found_exactly(table: int, power: int) -> None:
    true_minimum = 2**power
    finding = checks.minimum_finding(search_minimum(true_minimum, table), table)
    if finding.verdict == "mismatch":
        assert finding.override["min_cacheable_tokens"] == true_minimum


def search_lookback(reach: int, table: int) -> tuple[int | None, int | None]:
    """The lookback search against an API that walks back `reach` positions."""
    hit: int | None = None
    missed: int | None = None

    def tried(distance: int) -> None:
        nonlocal hit, missed
        if distance + 1 <= reach:
            hit = max(hit or 0, distance)
        else:
            missed = distance if missed is None else min(missed, distance)

    for distance in (table, table - 1):
        tried(distance)
    while missed is not None:
        distance = checks.next_distance(hit or 0, missed)
        if distance is None:
            break
        tried(distance)
    return hit, missed


@given(reach=st.integers(1, 40), table=st.integers(2, 30))
def test_the_lookback_found_is_the_true_one_when_shorter_and_matches_only_when_equal(
    reach: int, table: int
) -> None:
    hit, missed = search_lookback(reach, table)
    finding = checks.lookback_finding(hit, missed, table)
    assert (finding.verdict == "match") == (reach == table)
    if reach < table:
        assert finding.override == {"cache_lookback": reach}
    else:
        assert finding.override == {}  # a longer lookback than believed costs nothing


@given(
    which=st.sampled_from(
        ["cache_read_multiplier", "cache_write_5m_multiplier", "cache_write_1h_multiplier"]
    ),
    multiplier=st.floats(0.01, 4.0),
    tokens=st.tuples(*[st.integers(1, 200_000)] * 4),
)
def test_a_multiplier_read_back_from_a_bill_is_the_one_that_priced_it(
    which: checks.MultiplierField, multiplier: float, tokens: tuple[int, int, int, int]
) -> None:
    usage = Usage(*tokens)
    billed = cost_usd(usage, SONNET.model_copy(update={which: multiplier}))
    measured = checks.multiplier_of(billed, usage, SONNET, which)
    assert measured is not None
    assert abs(measured - multiplier) <= 1e-6 * max(1.0, multiplier)


@given(
    head=st.integers(1, 50_000),
    second=st.integers(1, 5_000),
    tail=st.integers(0, 1_000),
    read=st.integers(0, 2),
)
def test_no_billing_of_a_probe_request_costs_more_than_its_price_beforehand(
    head: int, second: int, tail: int, read: int
) -> None:
    prompt = ProbePrompt(("a", "b", "c"), {0: "1h", 1: "5m"})
    sized = Sized(prompt, {0: head, 1: head + second}, head + second + tail)
    # Whatever is read, the rest written at 1h or 5m, as long as the tokens add up.
    read_tokens = (0, head, head + second)[read]
    for one_hour in (0, head + second - read_tokens):
        rest = head + second - read_tokens - one_hour
        usage = Usage(tail, read_tokens, rest, one_hour)
        assert cost_usd(usage, SONNET) <= checks.worst_usd(sized, SONNET)
    bound = checks.bound_of(sized, SONNET)
    assert bound.prompt_tokens == sized.total
    assert bound.usd(SONNET) <= checks.worst_usd(sized, SONNET)


@given(
    minimum=st.integers(1, 100_000),
    lookback=st.integers(1, 40),
    read=st.floats(0.001, 1.0).map(lambda x: round(x, 4)),
)
def test_the_overrides_written_are_a_models_file_the_table_reads_back(
    minimum: int, lookback: int, read: float
) -> None:
    overrides = {
        "min_cacheable_tokens": minimum,
        "cache_lookback": lookback,
        "cache_read_multiplier": read,
    }
    text = checks.render_overrides(SONNET.id, overrides, "measured")
    spec = parse_catalog(shipped_table(), text).get(SONNET.id)
    assert spec.min_cacheable_tokens == minimum
    assert spec.cache_lookback == lookback
    assert spec.cache_read_multiplier == read
    assert spec.input_usd_per_mtok == SONNET.input_usd_per_mtok


def test_the_tier_is_named_from_the_headers_figures() -> None:
    table = load_limits()
    figures = table.get_tier("2").classes["haiku-4-5"]
    stated = {"requests": figures.rpm, "input_tokens": figures.itpm, "output_tokens": figures.otpm}
    assert checks.tier_finding(stated, table, "claude-haiku-4-5").table == "tier 2"
    unknown = checks.tier_finding({"requests": 7}, table, "claude-haiku-4-5")
    assert unknown.verdict == "mismatch"
    assert checks.tier_finding({}, table, "claude-haiku-4-5").verdict == "skipped"


@given(counted=st.integers(1, 10**6), billed=st.integers(1, 10**6))
def test_the_drift_is_a_match_only_within_a_few_tokens(counted: int, billed: int) -> None:
    finding = checks.drift_finding(counted, billed)
    assert (finding.verdict == "match") == checks.close(counted, billed)
    assert f"{100 * (counted - billed) / billed:+.2f}%" in finding.measured
