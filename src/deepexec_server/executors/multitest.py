"""A code job's test cases: run the (already compiled) program once per test, each run in a
fresh sandbox, and judge each run's output (``judging``).

The code executor compiles once, then hands ``run_tests`` a ``run_one`` that starts the
program with a test's stdin; this module orders the runs, reports progress (tests done / tests
total), stops at the first failure when asked, bounds what each test keeps of its output, and
builds the result's ``tests`` list and ``summary``.

Job data (declared in ``deepexec_sdk.job_data.CodeExecutionData``)::

    {"code": ..., "language": ..., "tests": [{"stdin": "1 2", "expected_output": "3"}, ...],
     "compare": "trailing_whitespace", "float_tolerance": 1e-6, "stop_on_failure": false}

A test without ``expected_output`` passes when the program runs cleanly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from deepexec_sdk.job_data import DEFAULT_FLOAT_TOLERANCE

from .judging import Compare, Verdict, summary, verdict

#: What all tests together keep of their outputs (each stream of each test gets an equal
#: share, at most ``MAX_TEST_OUTPUT_BYTES``); the comparison always sees the whole output the
#: run captured.
TESTS_OUTPUT_BUDGET = 4 * 1024 * 1024
MAX_TEST_OUTPUT_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Case:
    stdin: str = ""
    expected_output: str | None = None
    name: str | None = None

    @classmethod
    def from_data(cls, raw: Mapping[str, Any]) -> Case:
        return cls(
            stdin=str(raw.get("stdin") or ""),
            expected_output=raw.get("expected_output"),
            name=raw.get("name"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class CaseRun:
    """What one run of the program gave (the executor's outcome of one sandboxed run)."""

    stdout: str
    stderr: str
    exit_code: int | None
    signal: str | None
    wall_time_ms: int | None
    #: The run's error type (``timeout``, ``memory_limit``, ``runtime_error``...), None if clean.
    error_type: str | None = None
    error_message: str | None = None
    cpu_time_ms: int | None = None
    memory_peak_kb: int | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Judging:
    """How the outputs are compared, and whether the first failure ends the job."""

    compare: Compare = Compare.TRAILING_WHITESPACE
    float_tolerance: float = DEFAULT_FLOAT_TOLERANCE
    stop_on_failure: bool = False

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Judging:
        return cls(
            compare=Compare(data.get("compare") or Compare.TRAILING_WHITESPACE),
            # 0 is a tolerance (exact numbers), not "unset".
            float_tolerance=float(
                DEFAULT_FLOAT_TOLERANCE
                if data.get("float_tolerance") is None
                else data["float_tolerance"]
            ),
            stop_on_failure=bool(data.get("stop_on_failure")),
        )


def output_share(n_tests: int) -> int:
    """Bytes each stream of each test keeps in the result."""
    return max(1024, min(MAX_TEST_OUTPUT_BYTES, TESTS_OUTPUT_BUDGET // max(1, 2 * n_tests)))


def _kept(text: str, limit: int) -> tuple[str, bool]:
    raw = text.encode("utf-8", errors="surrogatepass")
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode("utf-8", errors="ignore"), True


def case_result(case: Case, run: CaseRun, judging: Judging, share: int) -> dict[str, Any]:
    """One test's entry in the result: its verdict, kept outputs, exit, time and memory."""
    outcome = verdict(
        run.error_type, run.stdout, case.expected_output, judging.compare, judging.float_tolerance
    )
    stdout, out_cut = _kept(run.stdout, share)
    stderr, err_cut = _kept(run.stderr, share)
    entry: dict[str, Any] = {
        "verdict": outcome.value,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": out_cut or run.stdout_truncated,
        "stderr_truncated": err_cut or run.stderr_truncated,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "wall_time_ms": run.wall_time_ms,
        "cpu_time_ms": run.cpu_time_ms,
        "memory_peak_kb": run.memory_peak_kb,
    }
    if case.name is not None:
        entry["name"] = case.name
    if run.error_type is not None:
        entry["error"] = {"type": run.error_type, "message": run.error_message or ""}
    return entry


async def run_tests(
    tests: Sequence[Case],
    run_one: Callable[[Case], Awaitable[CaseRun]],
    judging: Judging,
    on_progress: Callable[[int, str], None],
    cancelled: Callable[[], bool],
) -> dict[str, Any]:
    """Run every test in order (or up to the first failure with ``stop_on_failure``) and
    return the result's ``tests`` and ``summary``. Stops early, the remaining tests unrun,
    when ``cancelled()`` says so."""
    share = output_share(len(tests))
    entries: list[dict[str, Any]] = []
    for index, case in enumerate(tests):
        if cancelled():
            break
        run = await run_one(case)
        entries.append(case_result(case, run, judging, share))
        on_progress(int(100 * (index + 1) / len(tests)), f"test {index + 1}/{len(tests)}")
        if judging.stop_on_failure and entries[-1]["verdict"] != Verdict.ACCEPTED:
            break
    verdicts = [Verdict(e["verdict"]) for e in entries]
    return {
        "tests": entries,
        "summary": {**summary(verdicts), "run": len(entries), "of": len(tests)},
    }


def compile_error_tests(n_tests: int) -> dict[str, Any]:
    """The ``tests`` and ``summary`` of a job whose program did not compile: no test ran, each
    has the verdict ``compile_error``."""
    verdicts = [Verdict.COMPILE_ERROR] * n_tests
    return {
        "tests": [{"verdict": v.value} for v in verdicts],
        "summary": {**summary(verdicts), "run": 0, "of": n_tests},
    }
