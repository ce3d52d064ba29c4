"""Submissions of the official ``judge0`` PyPI client (0.0.8, unmodified) run to their verdicts
on the real server: single and batch (42 and 84, as its own tests do), ``wait``, base64 round
trips, Accepted / Wrong Answer / Time Limit / Compilation Error / runtime errors by signal, in
Python, C++ and Java."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests.serverproc import ServerProcess

judge0 = pytest.importorskip("judge0")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    return judge0.Client(server.base_url, {"X-Auth-Token": server.api_key})


def _wait(client: Any, submissions: Any) -> Any:
    created = judge0.api.create_submissions(client=client, submissions=submissions)
    retry = judge0.MaxWaitTime(120)
    return judge0.wait(client=client, submissions=created, retry_strategy=retry)


def test_python_cpp_and_java_are_accepted_with_base64_round_trips(client: Any) -> None:
    unicode_out = "héllo, wörld ✓"
    cases = [
        (71, f"import sys\nprint(sys.stdin.read().strip() + ' {unicode_out}')", "in"),
        (54, "#include <iostream>\nint main(){std::string s; std::cin>>s;"
             ' std::cout<<s<<" ok\\n";}', "cpp"),
        (62, 'public class Main { public static void main(String[] a) {'
             ' System.out.println(new java.util.Scanner(System.in).next() + " ok"); } }', "jdk17"),
    ]  # fmt: skip
    wanted = [f"in {unicode_out}\n", "cpp ok\n", "jdk17 ok\n"]
    # (stdin that happens to be valid base64, like "java", the client itself decodes when it
    # builds the Submission: not a server matter)
    submissions = [
        judge0.Submission(source_code=code, language=lang, stdin=stdin, expected_output=want)
        for (lang, code, stdin), want in zip(cases, wanted, strict=True)
    ]
    done = _wait(client, submissions)
    for sub, want in zip(done, wanted, strict=True):
        assert sub.status == judge0.Status.ACCEPTED, (sub.status, sub.stdout, sub.stderr)
        assert sub.stdout == want
        assert float(sub.time) >= 0 and sub.memory is not None


def test_a_wrong_answer_and_the_failure_statuses(client: Any) -> None:
    sources = [
        ("print(41)", "42"),
        ("import time\ntime.sleep(20)", None),
        ("import os\nos.kill(os.getpid(), 11)", None),
        ("import sys\nsys.exit(2)", None),
    ]
    submissions = [
        judge0.Submission(
            source_code=code, language=71, expected_output=want, cpu_time_limit=1, wall_time_limit=2
        )
        for code, want in sources
    ]
    submissions.append(judge0.Submission(source_code="int main( {", language=54))
    done = _wait(client, submissions)
    statuses = [s.status for s in done]
    assert statuses == [
        judge0.Status.WRONG_ANSWER,
        judge0.Status.TIME_LIMIT_EXCEEDED,
        judge0.Status.RUNTIME_ERROR_SIGSEGV,
        judge0.Status.RUNTIME_ERROR_NZEC,
        judge0.Status.COMPILATION_ERROR,
    ], [(s.status, s.stderr, s.message) for s in done]
    assert done[0].stdout == "41\n"
    assert "error" in (done[4].compile_output or "")


@pytest.mark.parametrize("count", [42, 84])
def test_batches_of_42_and_84_as_the_clients_own_tests(client: Any, count: int) -> None:
    submissions = [
        judge0.Submission(source_code=f"print({i})", language=71, expected_output=f"{i}")
        for i in range(count)
    ]
    done = _wait(client, submissions)
    assert len(done) == count
    assert all(s.status == judge0.Status.ACCEPTED for s in done)
    assert [s.stdout for s in done] == [f"{i}\n" for i in range(count)]


def test_run_waits_for_one_submission(client: Any) -> None:
    result = judge0.run(client=client, source_code="print(6 * 7)", language=71)
    assert result.status == judge0.Status.ACCEPTED and result.stdout == "42\n"
