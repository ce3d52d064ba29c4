"""The SDK reference's complete programs (docs/sdk-reference.md, "Usage Examples" and "Error
Handling"), run verbatim as a user's scripts against a real server on its defaults."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import processes_of_job, wait_for_no_processes_of_job
from tests.serverproc import ServerProcess

REFERENCE = Path(__file__).parent.parent / "docs" / "sdk-reference.md"


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start:] if end == -1 else text[start:end]


def _blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def example(title: str, index: int = 0) -> str:
    return _blocks(_section(REFERENCE.read_text(), title))[index]


def test_reference_has_the_examples_we_run() -> None:
    usage = _blocks(_section(REFERENCE.read_text(), "Usage Examples"))
    assert len(usage) == 3
    assert "cancel_after_delay" in usage[1]
    assert "wait_with_timeout" in usage[2]
    assert "MCPExecutionError" in example("Error Handling")


class TimedRun:
    """Runs a script, recording when each stdout line arrived."""

    def __init__(self, server: ServerProcess, code: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code],
            env=server.env,
            cwd=server.home,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.append(self.proc.stderr.read())

    def finish(self, timeout: float) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        for t in self._readers:
            t.join(5)
        return self.proc.returncode, "\n".join(t for _, t in self.lines), "".join(self.stderr)

    def when(self, prefix: str) -> float:
        return next(t for t, line in self.lines if line.startswith(prefix))


@pytest.mark.slow
def test_basic_submission_example_completes_with_every_step(server: ServerProcess) -> None:
    run = TimedRun(server, example("Usage Examples", 0))
    code, out, err = run.finish(timeout=60)
    assert code == 0, err
    assert "Job completed successfully!" in out, out
    result_line = next(line for line in out.splitlines() if line.startswith("Result: "))
    for i in range(5):
        assert f"Step {i}" in result_line
    assert "Done!" in result_line
    # it watched the job run: RUNNING was seen at least once before COMPLETED
    assert "Status: RUNNING" in out


@pytest.mark.slow
def test_cancellation_example_ends_canceled_within_a_second(server: ServerProcess) -> None:
    run = TimedRun(server, example("Usage Examples", 1))
    code, out, err = run.finish(timeout=60)
    assert code == 0, err
    assert "Final status: CANCELED" in out, out
    assert run.when("Final status:") - run.when("Canceling job...") < 1.0
    job_id = out.split("Long-running job submitted with ID: ")[1].split()[0]
    # the program's processes are gone by the time the example printed its final status
    assert processes_of_job(job_id) == [] or wait_for_no_processes_of_job(job_id, 0.2) == []


@pytest.mark.slow
def test_wait_example_completes(server: ServerProcess) -> None:
    run = TimedRun(server, example("Usage Examples", 2))
    code, out, err = run.finish(timeout=60)
    assert code == 0, err
    assert "Job completed with status: COMPLETED" in out, out
    assert "This is a quick job" in out


def test_error_handling_example_ends_without_unexpected_exception(
    server: ServerProcess,
) -> None:
    run = TimedRun(server, example("Error Handling"))
    code, out, err = run.finish(timeout=60)
    assert code == 0, err
    assert "Unexpected error" not in out, out
    assert "Traceback" not in err, err


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="needs g++")
def test_judging_example_prints_a_verdict_per_test(server: ServerProcess) -> None:
    run = TimedRun(server, example("Judging a program against test cases"))
    code, out, err = run.finish(timeout=120)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["accepted", "accepted"], out
    assert "'passed': 2" in lines[2] and "'total': 2" in lines[2], out
