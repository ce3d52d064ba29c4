"""The ``deepexec`` command as a user runs it, against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

from tests.serverproc import DEEPEXEC, ServerProcess

PROGRESS_PROGRAM = (
    "import os, time\n"
    "fd = int(os.environ['DEEPEXEC_PROGRESS_FD'])\n"
    "time.sleep(1)\n"
    "for p in (20, 40, 60, 80):\n"
    "    os.write(fd, f'{p} working\\n'.encode())\n"
    "    time.sleep(0.5)\n"
    "print('all done')\n"
)


def test_wait_shows_progress_live_then_prints_the_result(server: ServerProcess) -> None:
    job_id = server.cli(
        "submit", "--code", PROGRESS_PROGRAM, "--name", "cli-progress"
    ).stdout.strip()
    assert job_id.startswith("job_")
    proc = subprocess.Popen(
        [DEEPEXEC, "wait", job_id],
        env=server.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[tuple[float, str]] = []
    for line in proc.stderr:
        lines.append((time.monotonic(), line.rstrip()))
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.wait(30) == 0
    progress_lines = [(t, line) for t, line in lines if "%" in line and "RUNNING" in line]
    percents = {line.split("]")[1].split("%")[0].strip() for _, line in progress_lines}
    assert {"20", "40", "60", "80"} <= percents, lines
    # live: the progress lines arrived over the job's run, not all at the end
    assert progress_lines[-1][0] - progress_lines[0][0] > 1.0
    assert "all done" in out
    assert f"{job_id} COMPLETED" in lines[-1][1]


def test_submit_follow_streams_output_and_exit_code_reflects_failure(server: ServerProcess) -> None:
    res = server.cli(
        "submit", "--follow", "-l", "bash", "--code", "echo out; echo err >&2; exit 4", check=False
    )
    assert res.returncode == 1
    assert "out" in res.stdout
    assert "err" in res.stderr
    assert "runtime_error" in res.stderr


def test_status_list_logs_and_cancel(server: ServerProcess) -> None:
    job_id = server.cli(
        "submit", "--code", "print('logged line')", "--tag", "cli-test"
    ).stdout.strip()
    server.cli("wait", job_id)
    status = json.loads(server.cli("status", job_id, "--json").stdout)
    assert status["status"] == "COMPLETED"
    assert "logged line" in server.cli("logs", job_id).stdout
    listing = server.cli("list", "--tag", "cli-test").stdout
    assert job_id in listing and "COMPLETED" in listing
    slow = server.cli("submit", "--code", "import time; time.sleep(30)").stdout.strip()
    cancel = server.cli("cancel", slow, "--reason", "test")
    assert "CANCELED" in cancel.stdout
    again = server.cli("cancel", slow, check=False)
    assert again.returncode == 1 and "already ended" in again.stderr


def test_submit_a_file_by_suffix(server: ServerProcess, tmp_path: object) -> None:
    from pathlib import Path

    script = Path(str(tmp_path)) / "hello.js"
    script.write_text("console.log('hello from ' + 'node')\n")
    res = server.cli("submit", "--wait", str(script))
    assert "hello from node" in res.stdout
    if shutil.which("gcc") is not None:
        program = Path(str(tmp_path)) / "hello.c"
        program.write_text('#include <stdio.h>\nint main(void) { puts("hello from c"); }\n')
        assert "hello from c" in server.cli("submit", "--wait", str(program)).stdout


def test_submit_with_a_tests_directory_prints_a_verdict_per_test(
    server: ServerProcess, tmp_path: object
) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    program = root / "double.py"
    program.write_text("print(2 * int(input()))\n")
    tests = root / "tests"
    tests.mkdir()
    for n, (given, want) in enumerate([("1", "2"), ("5", "10"), ("3", "7")], 1):
        (tests / f"{n}.in").write_text(given + "\n")
        (tests / f"{n}.out").write_text(want + "\n")
    (tests / "10.in").write_text("4\n")  # no .out: passes when the program runs cleanly
    res = server.cli("submit", "--wait", str(program), "--tests", str(tests))
    lines = res.stdout.splitlines()
    assert lines[:4] == [line for line in lines if line.startswith("test ")], (
        res.stdout
    )  # in order: 1, 2, 3, 10
    assert [ln.split()[1] for ln in lines[:4]] == ["1:", "2:", "3:", "10:"]
    assert [ln.split()[2] for ln in lines[:4]] == [
        "accepted", "accepted", "wrong_answer", "accepted",
    ]  # fmt: skip
    assert "passed 3/4" in res.stdout
    empty = root / "empty"
    empty.mkdir()
    bad = server.cli("submit", str(program), "--tests", str(empty), check=False)
    assert bad.returncode != 0 and "NAME.in" in bad.stderr


def test_unknown_job_gives_a_clear_error(server: ServerProcess) -> None:
    res = server.cli("status", "job_doesnotexist", check=False)
    assert res.returncode == 1
    assert "job_doesnotexist" in res.stderr
