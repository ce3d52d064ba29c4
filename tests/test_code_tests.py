"""Multi-test code jobs through the real server and sandbox: ``data.tests`` runs a program
compiled once against N test cases, each in a fresh sandbox, with a verdict per test."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from deepexec_sdk import DeepExecClient
from deepexec_sdk.errors import DeepExecError

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
]

#: Prints the sum of its two inputs, and the nanosecond mtime of its own executable: one value
#: across every test proves one build (a build per test gives a new file each time).
CPP_SUM = r"""
#include <iostream>
#include <sys/stat.h>
int main() {
  long a, b; std::cin >> a >> b;
  struct stat st; stat("/proc/self/exe", &st);
  std::cerr << st.st_mtim.tv_sec << "." << st.st_mtim.tv_nsec << "\n";
  std::cout << a + b << "\n";
}
"""


def _run(client: DeepExecClient, code: str, language: str, **data: Any) -> Any:
    return client.execute_code_and_wait(
        code, language, poll_interval=0.05, max_wait_time=100, **data
    )


def test_a_cpp_solution_compiles_once_for_all_tests(client: DeepExecClient) -> None:
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    tests = [
        {"stdin": f"{i} {i}", "expected_output": f"{2 * i}\n", "name": f"t{i}"} for i in range(5)
    ]
    tests.append({"stdin": "1 1", "expected_output": "3"})
    job = _run(client, CPP_SUM, "cpp", tests=tests)
    assert job.status == "COMPLETED", job
    result = job.result
    assert result["compiled"] == 1
    verdicts = [t["verdict"] for t in result["tests"]]
    assert verdicts == ["accepted"] * 5 + ["wrong_answer"]
    assert [t.get("name") for t in result["tests"]][:2] == ["t0", "t1"]
    assert result["tests"][5]["stdout"] == "2\n"
    assert len({t["stderr"] for t in result["tests"]}) == 1  # one executable for all
    summary = result["summary"]
    assert summary["passed"] == 5 and summary["total"] == 6 and summary["of"] == 6
    assert summary["first_failure"] == "wrong_answer"
    assert job.progress == 100
    assert all(t["wall_time_ms"] is not None for t in result["tests"])


def test_verdicts_time_limit_runtime_error_with_signal_and_early_stop(
    client: DeepExecClient,
) -> None:
    code = (
        "import os, sys, time\n"
        "x = sys.stdin.read().strip()\n"
        "if x == 'loop':\n    time.sleep(30)\n"
        "if x == 'segv':\n    os.kill(os.getpid(), 11)\n"
        "if x == 'exit':\n    sys.exit(3)\n"
        "print(x)\n"
    )
    tests = [
        {"stdin": "ok", "expected_output": "ok"},
        {"stdin": "segv", "expected_output": "segv"},
        {"stdin": "exit"},
        {"stdin": "1.0000001", "expected_output": "1"},
    ]
    job = _run(client, code, "python", tests=tests, compare="float", float_tolerance=1e-3)
    got = job.result["tests"]
    assert [t["verdict"] for t in got] == [
        "accepted", "runtime_error", "runtime_error", "accepted",
    ]  # fmt: skip
    assert got[1]["signal"] == "SIGSEGV" and got[2]["exit_code"] == 3
    assert job.result["compiled"] == 0
    stopped = _run(client, code, "python", tests=tests, stop_on_failure=True)
    assert [t["verdict"] for t in stopped.result["tests"]] == ["accepted", "runtime_error"]
    assert stopped.result["summary"]["run"] == 2 and stopped.result["summary"]["of"] == 4
    timed = _run(client, code, "python", tests=[{"stdin": "loop"}, {"stdin": "ok"}], timeout=3)
    assert timed.result["tests"][0]["verdict"] == "time_limit"


def test_a_compile_error_fails_the_job_before_any_test(client: DeepExecClient) -> None:
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    job = _run(client, "int main( {", "cpp", tests=[{"stdin": "", "expected_output": ""}])
    assert job.status == "FAILED" and job.error is not None
    assert job.error.type == "compile_error"
    assert "error" in job.result["compile_output"]
    assert job.result["tests"] == [{"verdict": "compile_error"}]
    assert job.result["summary"]["run"] == 0


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"tests": []}, "data.tests"),
        ({"tests": [{"stdin": "1", "expected": "2"}]}, "data.tests.0"),
        ({"tests": [{"stdin": "1"}], "compare": "fuzzy"}, "data.compare"),
        ({"tests": [{"stdin": "1"}], "float_tolerance": 5}, "data.float_tolerance"),
    ],
)
def test_bad_tests_are_refused_naming_the_field(
    client: DeepExecClient, data: dict[str, Any], where: str
) -> None:
    with pytest.raises(DeepExecError) as caught:
        client.submit_mcp_job("t", "code_execution", {"code": "print(1)", **data}, 10)
    assert where in str(caught.value)


#: Each test looks for what the test before it left, then leaves something itself: in its work
#: dir (a new file, and its own program's file overwritten) and in /tmp.
PYTHON_LEAVER = r"""
import os, sys
seen = [p for p in ("left.txt", "/tmp/left.txt") if os.path.exists(p)]
tampered = open(__file__).read().startswith("# tampered")
print(sys.stdin.read().strip(), seen, tampered)
open("left.txt", "w").write("x")
open("/tmp/left.txt", "w").write("x")
os.replace(__file__, __file__ + ".bak")
open(__file__, "w").write("# tampered\n" + open(__file__ + ".bak").read())
"""

C_LEAVER = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
  int left = access("left.txt", F_OK) == 0;
  int gone = access("main", F_OK) != 0;
  printf("%d %d\n", left, gone);
  FILE *f = fopen("left.txt", "w"); fputs("x", f); fclose(f);
  unlink("main");
  return 0;
}
"""


def test_each_test_starts_from_a_fresh_work_dir_holding_only_the_program(
    client: DeepExecClient,
) -> None:
    tests = [{"stdin": str(i), "expected_output": f"{i} [] False"} for i in range(3)]
    job = _run(client, PYTHON_LEAVER, "python", tests=tests)
    assert [t["stdout"] for t in job.result["tests"]] == [f"{i} [] False\n" for i in range(3)]
    assert job.result["summary"]["passed"] == 3
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    # The second test finds neither the file the first left nor the executable it deleted
    # missing: a copy of the one build, in a new dir.
    job = _run(client, C_LEAVER, "c", tests=[{"expected_output": "0 0"}] * 3)
    assert [t["verdict"] for t in job.result["tests"]] == ["accepted"] * 3, job.result
    assert job.result["compiled"] == 1


def test_a_float_tolerance_of_zero_compares_numbers_exactly(client: DeepExecClient) -> None:
    tests = [{"stdin": "1.0000001", "expected_output": "1"}, {"stdin": "2", "expected_output": "2"}]
    code = "print(input())"
    exact = _run(client, code, "python", tests=tests, compare="float", float_tolerance=0)
    assert [t["verdict"] for t in exact.result["tests"]] == ["wrong_answer", "accepted"]
    loose = _run(client, code, "python", tests=tests, compare="float")  # default 1e-6
    assert [t["verdict"] for t in loose.result["tests"]] == ["accepted", "accepted"]
