"""Test-case orchestration (``executors/multitest.py``): order, verdicts, progress, early stop
and output bounds. The runs here are given, so each rule is checked alone; the code executor's
tests run real programs through it in the sandbox."""

from __future__ import annotations

from typing import Any

from deepexec_server.executors.judging import Compare
from deepexec_server.executors.multitest import (
    MAX_TEST_OUTPUT_BYTES,
    Case,
    CaseRun,
    Judging,
    output_share,
    run_tests,
)


def echo_sum(case: Case) -> CaseRun:
    """What a program that prints the sum of its input's numbers would give."""
    try:
        total = sum(int(w) for w in case.stdin.split())
    except ValueError:
        return CaseRun("", "bad input\n", 1, None, 5, "runtime_error", "exit status 1")
    return CaseRun(f"{total}\n", "", 0, None, 5)


async def judge(
    tests: list[Case], judging: Judging | None = None
) -> tuple[dict[str, Any], list[Any]]:
    progress: list[tuple[int, str]] = []

    async def run_one(case: Case) -> CaseRun:
        return echo_sum(case)

    result = await run_tests(
        tests, run_one, judging or Judging(), lambda p, m: progress.append((p, m)), lambda: False
    )
    return result, progress


async def test_each_test_gets_its_verdict_in_order_with_progress() -> None:
    tests = [
        Case("1 2", "3"),
        Case("2 2", "5"),
        Case("x", "1"),
        Case("4 4", None),
        Case("1 1", "2  \n\n"),
    ]
    result, progress = await judge(tests)
    assert [t["verdict"] for t in result["tests"]] == [
        "accepted", "wrong_answer", "runtime_error", "accepted", "accepted",
    ]  # fmt: skip
    assert result["tests"][2]["error"] == {"type": "runtime_error", "message": "exit status 1"}
    assert result["summary"] == {
        "total": 5, "passed": 3, "run": 5, "of": 5, "first_failure": "wrong_answer",
        "counts": {"accepted": 3, "wrong_answer": 1, "runtime_error": 1},
    }  # fmt: skip
    assert progress == [(20, "test 1/5"), (40, "test 2/5"), (60, "test 3/5"), (80, "test 4/5"),
                        (100, "test 5/5")]  # fmt: skip


async def test_stop_on_failure_leaves_the_rest_unrun() -> None:
    tests = [Case("1", "1"), Case("1", "9"), Case("2", "2")]
    result, _ = await judge(tests, Judging(stop_on_failure=True))
    assert [t["verdict"] for t in result["tests"]] == ["accepted", "wrong_answer"]
    assert (result["summary"]["run"], result["summary"]["of"]) == (2, 3)


async def test_comparison_modes() -> None:
    tests = [Case("1 2", "3.0000001")]
    exact, _ = await judge(tests, Judging(compare=Compare.TOKENS))
    close, _ = await judge(tests, Judging(compare=Compare.FLOAT, float_tolerance=1e-3))
    assert exact["tests"][0]["verdict"] == "wrong_answer"
    assert close["tests"][0]["verdict"] == "accepted"


async def test_a_cancel_stops_between_tests() -> None:
    ran: list[str] = []

    async def run_one(case: Case) -> CaseRun:
        ran.append(case.stdin)
        return echo_sum(case)

    result = await run_tests(
        [Case("1"), Case("2"), Case("3")], run_one, Judging(),
        lambda p, m: None, lambda: len(ran) >= 2,
    )  # fmt: skip
    assert ran == ["1", "2"] and result["summary"]["run"] == 2


async def test_outputs_kept_per_test_are_bounded_and_marked() -> None:
    big = "y" * (2 * MAX_TEST_OUTPUT_BYTES)

    async def run_one(case: Case) -> CaseRun:
        return CaseRun(big, "", 0, None, 1)

    result = await run_tests([Case()], run_one, Judging(), lambda p, m: None, lambda: False)
    entry = result["tests"][0]
    assert len(entry["stdout"]) == MAX_TEST_OUTPUT_BYTES and entry["stdout_truncated"] is True
    assert entry["verdict"] == "accepted"  # judged on the whole output, not the kept part
    assert output_share(500) == 4 * 1024 * 1024 // 1000
