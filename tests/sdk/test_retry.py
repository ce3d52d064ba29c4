"""The one retry policy (``deepexec_sdk.retry``), shared by the SDK and the server's model
backends: backoff, ``Retry-After`` in both forms, caps and time limits."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepexec_sdk.retry import RetryPolicy, parse_retry_after

POLICY = RetryPolicy()
BACKOFF_CAP = POLICY.backoff_cap
RETRY_AFTER_CAP = POLICY.retry_after_cap


def backoff_delay(attempt: int, *, jitter: float, retry_after: float | None = None) -> float:
    delay = RetryPolicy(max_retries=1000).delay(attempt, jitter=jitter, retry_after=retry_after)
    assert delay is not None
    return delay


@given(attempt=st.integers(0, 200), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_is_capped_exponential_with_full_jitter(attempt: int, jitter: float) -> None:
    delay = backoff_delay(attempt, jitter=jitter)
    ceiling = min(BACKOFF_CAP, 0.5 * 2**attempt)
    assert 0 <= delay <= ceiling
    assert math.isclose(delay, jitter * ceiling)


def test_backoff_grows_then_stops_at_the_cap() -> None:
    almost_one = 0.999999
    delays = [backoff_delay(a, jitter=almost_one) for a in range(8)]
    assert delays[:5] == pytest.approx([0.5, 1, 2, 4, 8], rel=1e-4)
    assert max(delays) <= BACKOFF_CAP


@given(retry_after=st.floats(0, 10_000), jitter=st.floats(0, 1, exclude_max=True))
def test_retry_after_wins_up_to_its_cap(retry_after: float, jitter: float) -> None:
    assert backoff_delay(0, jitter=jitter, retry_after=retry_after) == min(
        retry_after, RETRY_AFTER_CAP
    )


NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("3", 3.0),
        ("0", 0.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("", None),
        (format_datetime(NOW + timedelta(seconds=7), usegmt=True), 7.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),
    ],
)
def test_retry_after_seconds_or_http_date(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_attempts_are_bounded() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.allows(0) and policy.allows(1) and not policy.allows(2)
    assert policy.delay(1, jitter=0.5) is not None
    assert policy.delay(2, jitter=0.5) is None


def test_a_retry_after_past_the_cap_is_waited_capped_or_given_up() -> None:
    assert RetryPolicy().delay(0, jitter=0.5, retry_after=3600) == 60.0
    assert RetryPolicy(give_up_past_cap=True).delay(0, jitter=0.5, retry_after=3600) is None
    assert RetryPolicy(give_up_past_cap=True).delay(0, jitter=0.5, retry_after=59) == 59


def test_a_wait_that_would_not_end_in_the_time_left_gives_up() -> None:
    assert RetryPolicy().delay(0, jitter=0.5, retry_after=5, time_left=10) == 5
    assert RetryPolicy().delay(0, jitter=0.5, retry_after=5, time_left=5) is None
    assert RetryPolicy().delay(3, jitter=0.99, time_left=0.1) is None
