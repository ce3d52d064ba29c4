"""Judging a program's run against a test case: how outputs are compared, and the verdict.

Pure: the code executor runs each test in its own sandbox and hands the run's outcome here;
the Judge0 and Piston adapters translate the verdicts into their own status codes.

Comparison modes (``compare``):

- ``exact``: byte for byte (as text).
- ``trailing_whitespace`` (the default, Judge0's rule): trailing spaces of every line, and
  blank lines at the start and end, do not count.
- ``tokens``: the same whitespace-separated tokens, in order.
- ``float``: tokens, where two numbers match when within ``float_tolerance`` of each other,
  absolutely or relatively.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any

from deepexec_sdk.job_data import DEFAULT_FLOAT_TOLERANCE


class Compare(enum.StrEnum):
    EXACT = "exact"
    TRAILING_WHITESPACE = "trailing_whitespace"
    TOKENS = "tokens"
    FLOAT = "float"


class Verdict(enum.StrEnum):
    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    TIME_LIMIT = "time_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    RUNTIME_ERROR = "runtime_error"
    COMPILE_ERROR = "compile_error"
    INTERNAL_ERROR = "internal_error"


#: A run's ``error.type`` -> its verdict (no error: the outputs decide).
_VERDICT_BY_ERROR: Mapping[str, Verdict] = {
    "timeout": Verdict.TIME_LIMIT,
    "cpu_limit": Verdict.TIME_LIMIT,
    "memory_limit": Verdict.MEMORY_LIMIT,
    "output_limit": Verdict.OUTPUT_LIMIT,
    "runtime_error": Verdict.RUNTIME_ERROR,
    "disk_limit": Verdict.RUNTIME_ERROR,
    "compile_error": Verdict.COMPILE_ERROR,
}


def normalise_trailing_whitespace(text: str) -> str:
    """``text`` without trailing whitespace on any line, nor blank lines around it."""
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def _numbers_match(expected: str, actual: str, tolerance: float) -> bool:
    try:
        want, got = float(expected), float(actual)
    except ValueError:
        return expected == actual
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    return math.isclose(want, got, rel_tol=tolerance, abs_tol=tolerance)


def outputs_match(
    expected: str,
    actual: str,
    mode: Compare = Compare.TRAILING_WHITESPACE,
    float_tolerance: float = DEFAULT_FLOAT_TOLERANCE,
) -> bool:
    """Whether a program's ``actual`` output is the ``expected`` one under ``mode``."""
    if mode == Compare.EXACT:
        return expected == actual
    if mode == Compare.TRAILING_WHITESPACE:
        return normalise_trailing_whitespace(expected) == normalise_trailing_whitespace(actual)
    want, got = expected.split(), actual.split()
    if len(want) != len(got):
        return False
    if mode == Compare.TOKENS:
        return want == got
    return all(_numbers_match(w, g, float_tolerance) for w, g in zip(want, got, strict=True))


def verdict(
    error_type: str | None,
    stdout: str,
    expected: str | None,
    mode: Compare = Compare.TRAILING_WHITESPACE,
    float_tolerance: float = DEFAULT_FLOAT_TOLERANCE,
) -> Verdict:
    """The verdict of one run: what went wrong first, else whether its output is the expected
    one (a test without an expected output is accepted when the program ran cleanly)."""
    if error_type is not None:
        return _VERDICT_BY_ERROR.get(error_type, Verdict.INTERNAL_ERROR)
    if expected is None or outputs_match(expected, stdout, mode, float_tolerance):
        return Verdict.ACCEPTED
    return Verdict.WRONG_ANSWER


def summary(verdicts: list[Verdict]) -> dict[str, Any]:
    """Counts of a job's test verdicts, and the first that was not accepted."""
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.value] = counts.get(v.value, 0) + 1
    first = next((v for v in verdicts if v != Verdict.ACCEPTED), None)
    return {
        "total": len(verdicts),
        "passed": counts.get(Verdict.ACCEPTED.value, 0),
        "counts": counts,
        "first_failure": first.value if first is not None else None,
    }
