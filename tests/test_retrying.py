"""The retry decision (api/retrying.py): pure, so checked as properties over every kind of
failure, status, header and attempt number."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_cache.api.retrying import MAX_WAIT, Failure, next_wait, retry_after

NOW = 1_800_000_000.0
kinds = st.sampled_from(["refused", "unreached", "unanswered", "garbled", "broken"])
statuses = st.one_of(st.none(), st.integers(100, 599))
headers = st.dictionaries(
    st.sampled_from(["retry-after", "retry-after-ms", "x-should-retry", "Retry-After"]),
    st.one_of(
        st.sampled_from(["true", "false", "0", "-1", "garbage"]), st.integers(0, 120).map(str)
    ),
    max_size=3,
)
failures = st.builds(Failure, kinds, statuses, headers, st.booleans())
jitters = st.floats(0, 1, exclude_max=True)


@given(failures, st.integers(1, 50), st.integers(0, 10), jitters)
def test_no_attempt_is_made_past_the_retries_allowed(
    failure: Failure, attempt: int, retries: int, jitter: float
) -> None:
    wait = next_wait(failure, attempt, max_retries=retries, jitter=jitter, now=NOW)
    if attempt > retries:
        assert wait is None
    if wait is not None:
        assert wait > 0


@given(st.sampled_from(["garbled", "broken"]), headers, st.booleans(), st.integers(1, 5))
def test_a_response_that_may_have_been_billed_is_never_sent_again(
    kind: str, said: dict[str, str], writes: bool, attempt: int
) -> None:
    failure = Failure(kind, 200, said, writes)  # type: ignore[arg-type]
    assert next_wait(failure, attempt, max_retries=10, jitter=0.0, now=NOW) is None


@given(headers, st.integers(1, 5))
def test_a_request_that_writes_the_cache_is_not_sent_again_when_no_response_began(
    said: dict[str, str], attempt: int
) -> None:
    said = {k: v for k, v in said.items() if k != "x-should-retry"}
    writer = Failure("unanswered", writes_cache=True, headers=said)
    reader = Failure("unanswered", writes_cache=False, headers=said)
    assert next_wait(writer, attempt, max_retries=10, jitter=0.0, now=NOW) is None
    assert next_wait(reader, attempt, max_retries=10, jitter=0.0, now=NOW) is not None


@given(st.integers(400, 599), st.integers(1, 5), jitters)
def test_only_the_statuses_the_api_marks_as_passing_are_retried(
    status: int, attempt: int, jitter: float
) -> None:
    wait = next_wait(Failure("refused", status), attempt, max_retries=10, jitter=jitter, now=NOW)
    assert (wait is not None) == (status in (408, 409, 429) or status >= 500)


@given(st.integers(1, 3600), st.integers(1, 5), jitters)
def test_a_retry_after_is_waited_exactly(seconds: int, attempt: int, jitter: float) -> None:
    failure = Failure("refused", 429, {"retry-after": str(seconds)})
    assert next_wait(failure, attempt, max_retries=10, jitter=jitter, now=NOW) == seconds


@given(st.integers(1, 30), jitters)
def test_without_a_retry_after_the_wait_doubles_up_to_a_cap(attempt: int, jitter: float) -> None:
    wait = next_wait(Failure("unreached"), attempt, max_retries=100, jitter=jitter, now=NOW)
    assert wait is not None
    full = min(0.5 * 2 ** (attempt - 1), MAX_WAIT)
    assert 0.75 * full <= wait <= full


@pytest.mark.parametrize("said", ["true", "false"])
def test_the_api_saying_whether_to_retry_is_obeyed(said: str) -> None:
    failure = Failure("refused", 400, {"x-should-retry": said})
    wait = next_wait(failure, 1, max_retries=2, jitter=0.0, now=NOW)
    assert (wait is not None) == (said == "true")


def test_a_retry_after_in_milliseconds_or_as_a_date_is_understood() -> None:
    assert retry_after({"retry-after-ms": "250"}, NOW) == 0.25
    assert retry_after({"Retry-After": formatdate(NOW + 30, usegmt=True)}, NOW) == 30
    assert retry_after({"retry-after": "soon"}, NOW) is None
    assert retry_after({}, NOW) is None
