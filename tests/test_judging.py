"""How test outputs are compared and runs judged (``executors.judging``): pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepexec_server.executors.judging import (
    Compare,
    Verdict,
    outputs_match,
    summary,
    verdict,
)


@pytest.mark.parametrize(
    ("expected", "actual", "mode", "match"),
    [
        ("42\n", "42\n", Compare.EXACT, True),
        ("42\n", "42", Compare.EXACT, False),
        # Judge0's rule: trailing spaces per line and blank lines around do not count.
        ("1 2\n3\n", "1 2   \n3", Compare.TRAILING_WHITESPACE, True),
        ("1 2\n3\n", "\n\n1 2\n3\n\n", Compare.TRAILING_WHITESPACE, True),
        ("1 2\n3\n", "1 2\n 3\n", Compare.TRAILING_WHITESPACE, False),
        ("1 2\n3\n", "1  2\n3\n", Compare.TRAILING_WHITESPACE, False),
        ("1 2\n3\n", "1\n2 3", Compare.TOKENS, True),
        ("1 2 3", "1 2", Compare.TOKENS, False),
        ("0.3333333", "0.33333334", Compare.FLOAT, True),
        ("1e9", "1000000000.0000004", Compare.FLOAT, True),
        ("0.5", "0.51", Compare.FLOAT, False),
        ("yes 0.5", "no 0.5", Compare.FLOAT, False),
        ("nan", "nan", Compare.FLOAT, True),
        ("nan", "0", Compare.FLOAT, False),
    ],
)
def test_outputs_match_by_mode(expected: str, actual: str, mode: Compare, match: bool) -> None:
    assert outputs_match(expected, actual, mode) is match


@given(st.text(alphabet=" \n\tab1", max_size=40))
def test_every_mode_accepts_the_output_itself(text: str) -> None:
    for mode in Compare:
        assert outputs_match(text, text, mode)


@pytest.mark.parametrize(
    ("error", "stdout", "expected", "judged"),
    [
        (None, "42\n", "42", Verdict.ACCEPTED),
        (None, "41\n", "42", Verdict.WRONG_ANSWER),
        (None, "anything", None, Verdict.ACCEPTED),
        ("timeout", "", "42", Verdict.TIME_LIMIT),
        ("cpu_limit", "", "42", Verdict.TIME_LIMIT),
        ("memory_limit", "42", "42", Verdict.MEMORY_LIMIT),
        ("output_limit", "42", "42", Verdict.OUTPUT_LIMIT),
        ("runtime_error", "42", "42", Verdict.RUNTIME_ERROR),
        ("compile_error", "", "42", Verdict.COMPILE_ERROR),
        ("internal_error", "", "42", Verdict.INTERNAL_ERROR),
        ("something_new", "", "42", Verdict.INTERNAL_ERROR),
    ],
)
def test_the_first_thing_that_went_wrong_decides(
    error: str | None, stdout: str, expected: str | None, judged: Verdict
) -> None:
    assert verdict(error, stdout, expected) == judged


def test_summary_counts_and_names_the_first_failure() -> None:
    assert summary([Verdict.ACCEPTED, Verdict.WRONG_ANSWER, Verdict.TIME_LIMIT]) == {
        "total": 3,
        "passed": 1,
        "counts": {"accepted": 1, "wrong_answer": 1, "time_limit": 1},
        "first_failure": "wrong_answer",
    }
    assert summary([])["first_failure"] is None
