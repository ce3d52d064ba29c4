"""The code_execution executor against the real bubblewrap sandbox and a real uid drop.

The only fake is the engine seam: ``FakeContext`` records what a job reports and exposes the
cancel event. Needs root (the uid drop), bwrap and the ``deepexec-sandbox`` user
(``scripts/setup-sandbox.sh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from deepexec_sdk.job_data import LIMIT_NAMES
from deepexec_server.domain import ErrorType
from deepexec_server.executors.base import JobDataError, Outcome
from deepexec_server.executors.code import CodeExecutor
from deepexec_server.executors.sandbox.deathwatch import OWNER_ENV
from deepexec_server.settings import CODE_LIMIT_NAMES, Settings
from tests.conftest import sandbox_uid_processes

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
]


class FakeContext:
    """The engine's ExecutionContext, recording what the job reports."""

    def __init__(self, timeout: float = 10, job_id: str | None = None) -> None:
        self.job_id = job_id or "job_" + secrets.token_hex(4)
        self.timeout = timeout
        self.cancel_requested = asyncio.Event()
        self.outputs: list[tuple[str, str]] = []
        self.progress: list[tuple[int | None, str | None]] = []

    def report_progress(self, progress: int | None, message: str | None = None) -> None:
        self.progress.append((progress, message))

    def emit_output(self, stream: str, text: str) -> None:
        self.outputs.append((stream, text))

    def streamed(self, stream: str) -> str:
        return "".join(t for s, t in self.outputs if s == stream)


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[CodeExecutor]:
    settings = Settings(
        data_dir=tmp_path / "data",
        credentials_file=tmp_path / "cred" / "credentials.json",
        max_output_bytes=64 * 1024,
    )
    ex = CodeExecutor(settings)
    await ex.start()
    if ex.describe()["sandbox"]["mode"] != "bubblewrap":
        pytest.skip(f"sandbox unavailable here: {ex.describe()['sandbox']['problem']}")
    yield ex
    await ex.close()


async def run(
    ex: CodeExecutor, data: dict[str, Any], timeout: float = 10
) -> tuple[Outcome, FakeContext]:
    ctx = FakeContext(timeout)
    outcome = await ex.execute(ex.validate(data, int(timeout)), ctx)
    return outcome, ctx


def live_processes_with(marker: str) -> list[int]:
    """Pids of non-zombie processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


# --- running programs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "print('hello from python')"),
        ("javascript", "console.log('hello from javascript')"),
        ("bash", "echo hello from bash"),
        ("py", "print('hello from python')"),
        ("node", "console.log('hello from javascript')"),
        ("sh", "echo hello from bash"),
    ],
)
async def test_hello_world_in_each_language(
    executor: CodeExecutor, language: str, code: str
) -> None:
    outcome, ctx = await run(executor, {"code": code, "language": language})
    assert outcome.error is None and not outcome.canceled
    assert outcome.result is not None
    canonical = outcome.result["language"]
    assert outcome.result["stdout"] == f"hello from {canonical}\n"
    assert outcome.result["exit_code"] == 0
    assert outcome.result["signal"] is None
    assert ctx.streamed("stdout") == outcome.result["stdout"]


async def test_stdin_args_and_env_reach_the_program(executor: CodeExecutor) -> None:
    code = "import os, sys; print(sys.stdin.read().upper(), sys.argv[1:], os.environ['GREETING'])"
    outcome, _ = await run(
        executor,
        {"code": code, "stdin": "abc", "args": ["x", "y z"], "env": {"GREETING": "hej"}},
    )
    assert outcome.result is not None
    assert outcome.result["stdout"] == "ABC ['x', 'y z'] hej\n"


async def test_nonzero_exit_is_a_runtime_error_with_output_kept(executor: CodeExecutor) -> None:
    code = "import sys; print('before'); sys.stderr.write('oops\\n'); sys.exit(7)"
    outcome, _ = await run(executor, {"code": code})
    assert outcome.error is not None
    assert outcome.error.type == ErrorType.RUNTIME_ERROR
    assert outcome.error.message == "exited with code 7"
    assert outcome.result is not None
    assert outcome.result["exit_code"] == 7
    assert outcome.result["stdout"] == "before\n"
    assert outcome.result["stderr"] == "oops\n"


async def test_uncaught_exception_reports_traceback(executor: CodeExecutor) -> None:
    outcome, _ = await run(executor, {"code": "raise ValueError('bad value')"})
    assert outcome.error is not None and outcome.error.type == ErrorType.RUNTIME_ERROR
    assert outcome.result is not None
    assert "ValueError: bad value" in outcome.result["stderr"]


async def test_program_killed_by_signal_reports_the_signal(executor: CodeExecutor) -> None:
    outcome, _ = await run(executor, {"code": "kill -SEGV $$", "language": "bash"})
    assert outcome.result is not None
    assert outcome.result["exit_code"] is None
    assert outcome.result["signal"] == "SIGSEGV"
    assert outcome.error is not None and outcome.error.type == ErrorType.RUNTIME_ERROR


async def test_timeout_keeps_output_and_returns_promptly(executor: CodeExecutor) -> None:
    code = "import time; print('started', flush=True); time.sleep(5)"
    started = time.monotonic()
    outcome, _ = await run(executor, {"code": code}, timeout=1)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert outcome.error is not None
    assert outcome.error.type == ErrorType.TIMEOUT
    assert outcome.error.message == "exceeded the 1 s time limit"
    assert outcome.result is not None
    assert outcome.result["timed_out"] is True
    assert outcome.result["stdout"] == "started\n"
    assert outcome.result["signal"] == "SIGKILL"
    assert outcome.result["exit_code"] is None


async def test_cancel_stops_the_job_within_a_second_and_leaves_no_process(
    executor: CodeExecutor,
) -> None:
    marker = "cancelmark" + secrets.token_hex(4)
    code = "import time; print('running', flush=True); time.sleep(30)"
    ctx = FakeContext(timeout=30)
    # The marker rides in argv, so it shows in /proc/<pid>/cmdline of the job's processes.
    data = executor.validate({"code": code, "args": [marker]}, 30)
    task = asyncio.create_task(executor.execute(data, ctx))
    while "running" not in ctx.streamed("stdout"):
        await asyncio.sleep(0.02)
    assert live_processes_with(marker)  # positive control: the scan sees the running job
    asked = time.monotonic()
    ctx.cancel_requested.set()
    outcome = await asyncio.wait_for(task, 1.0)
    assert time.monotonic() - asked < 1.0
    assert outcome.canceled
    assert outcome.result is not None and outcome.result["stdout"] == "running\n"
    assert live_processes_with(marker) == []


DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.close(1); os.close(2)
        time.sleep(60)
        os._exit(0)
    os._exit(0)
time.sleep(0.2)
print("parent done", flush=True)
{tail}
"""


async def test_double_forked_setsid_daemon_dies_when_the_program_ends(
    executor: CodeExecutor,
) -> None:
    marker = "daemonend" + secrets.token_hex(4)
    code = DAEMON.format(tail="")
    started = time.monotonic()
    outcome, _ = await run(executor, {"code": code, "args": [marker]})
    assert time.monotonic() - started < 3
    assert outcome.error is None
    assert outcome.result is not None and outcome.result["stdout"] == "parent done\n"
    assert live_processes_with(marker) == []


async def test_double_forked_setsid_daemon_dies_on_cancel(executor: CodeExecutor) -> None:
    marker = "daemoncancel" + secrets.token_hex(4)
    code = DAEMON.format(tail="time.sleep(30)")
    ctx = FakeContext(timeout=30)
    data = executor.validate({"code": code, "args": [marker]}, 30)
    task = asyncio.create_task(executor.execute(data, ctx))
    while "parent done" not in ctx.streamed("stdout"):
        await asyncio.sleep(0.02)
    assert live_processes_with(marker)  # the daemon is running
    ctx.cancel_requested.set()
    outcome = await asyncio.wait_for(task, 1.0)
    assert outcome.canceled
    assert live_processes_with(marker) == []


#: A server process that starts its death watch, then a process carrying the watch's mark in
#: its own session (as the launcher, both bwraps and the sandbox init do), then dies without
#: any clean-up. argv: the marker for the process's command line.
DIE_LEAVING_A_MARKED_PROCESS = """
import os, subprocess, sys
from deepexec_server.executors.sandbox.deathwatch import death_watch_env

mark = death_watch_env()
assert mark, "no death watch"
proc = subprocess.Popen(
    ["sleep", "60", sys.argv[1]], env={**os.environ, **mark}, start_new_session=True
)
print(proc.pid, flush=True)
os._exit(0)
"""


def test_the_death_watch_kills_marked_processes_once_the_server_is_gone() -> None:
    # bwrap's child only sets its parent-death signal once set up, and never checks that its
    # parent is still there (bubblewrap#633): a server killed in those milliseconds used to
    # leave a bwrap blocked forever, or the program running as an orphan. Every launch
    # carries the server's mark, and its death watch kills whatever still carries it.
    marker = f"deathwatch{secrets.token_hex(6)}"
    out = subprocess.run(
        [sys.executable, "-c", DIE_LEAVING_A_MARKED_PROCESS, marker],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout)
    try:
        deadline = time.monotonic() + 5
        while live_processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_processes_with(marker) == []
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


async def test_output_flood_ends_failed_output_limit_with_the_kept_output(
    executor: CodeExecutor,
) -> None:
    code = (
        "import sys\n"
        "for _ in range(200): sys.stdout.write('x' * 10000)\n"
        "print('end', file=sys.stderr)"
    )
    outcome, ctx = await run(executor, {"code": code})
    assert outcome.error is not None and outcome.error.type == ErrorType.OUTPUT_LIMIT
    assert "65536 bytes" in outcome.error.message
    assert outcome.result is not None
    assert outcome.result["stdout"] == "x" * 64 * 1024
    assert outcome.result["stdout_truncated"] is True
    assert outcome.result["stderr_truncated"] is False
    assert len(ctx.streamed("stdout")) == 64 * 1024


async def test_infinite_output_is_stopped_at_the_cap_not_the_timeout(
    executor: CodeExecutor,
) -> None:
    started = time.monotonic()
    outcome, _ = await run(executor, {"code": "yes", "language": "bash"}, timeout=10)
    assert time.monotonic() - started < 3
    assert outcome.error is not None and outcome.error.type == ErrorType.OUTPUT_LIMIT
    assert outcome.result is not None
    assert outcome.result["stdout_truncated"] is True
    assert outcome.result["timed_out"] is False
    assert len(outcome.result["stdout"]) == 64 * 1024


# --- isolation --------------------------------------------------------------------------------


async def test_no_network_to_a_host_listener(executor: CodeExecutor) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', type(e).__name__)\n"
        )
        outcome, _ = await run(executor, {"code": code})
        assert outcome.result is not None
        assert outcome.result["stdout"].startswith("refused")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever reached the host listener
    finally:
        listener.close()


async def test_cannot_read_etc_shadow(executor: CodeExecutor) -> None:
    assert Path("/etc/shadow").read_text()  # positive control: readable by the test (root)
    code = (
        "try:\n    open('/etc/shadow').read(); print('READ')\n"
        "except PermissionError:\n    print('denied')\n"
    )
    outcome, _ = await run(executor, {"code": code})
    assert outcome.result is not None and outcome.result["stdout"] == "denied\n"


async def test_server_environment_does_not_reach_the_program(
    executor: CodeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("DEEPEXEC_TEST_SECRET", secret)
    code = "import os; print(sorted(os.environ)); print(open('/proc/1/environ').read())"
    outcome, _ = await run(executor, {"code": code})
    assert outcome.result is not None
    assert "DEEPEXEC_TEST_SECRET" not in outcome.result["stdout"]
    assert secret not in outcome.result["stdout"] + outcome.result["stderr"]
    # The death watch's mark is in the launch environment (so /proc/1's), not the program's.
    program_env = outcome.result["stdout"].splitlines()[0]
    assert "PATH" in program_env and OWNER_ENV not in program_env


async def test_writes_outside_the_work_dir_fail_and_hidden_dirs_are_empty(
    executor: CodeExecutor, tmp_path: Path
) -> None:
    data_dir = executor.settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "deepexec.db").write_text("private")
    code = f"""
import os
for p in ['/usr/evil', '/etc/evil', '/evil']:
    try:
        open(p, 'w'); print('WROTE', p)
    except OSError as e:
        print('denied', p, e.errno)
open('/home/sandbox/ok.txt', 'w').write('fine'); print('work dir ok')
open('/tmp/t.txt', 'w').write('fine'); print('tmp ok')
print('data visible', os.path.exists({str(data_dir / "deepexec.db")!r}))
print('root visible', os.path.exists('/root'))
"""
    outcome, _ = await run(executor, {"code": code})
    assert outcome.result is not None
    out = outcome.result["stdout"]
    assert "WROTE" not in out
    assert out.count("denied") == 3
    assert "work dir ok" in out and "tmp ok" in out
    assert "data visible False" in out
    assert "root visible False" in out


async def test_work_dir_is_removed_after_the_job(executor: CodeExecutor) -> None:
    code = "import os; print(os.getcwd()); open('left.txt', 'w').write('x')"
    root = executor.work_root
    assert root is not None
    mine = f"{os.getpid()}-"  # other servers on this host may share the root
    before = {p for p in root.iterdir() if p.name.startswith(mine)}
    outcome, _ = await run(executor, {"code": code})
    assert outcome.result is not None and outcome.result["stdout"] == "/home/sandbox\n"
    assert {p for p in root.iterdir() if p.name.startswith(mine)} == before


async def test_progress_lines_reach_report_progress(executor: CodeExecutor) -> None:
    code = (
        "import os\n"
        "fd = int(os.environ['DEEPEXEC_PROGRESS_FD'])\n"
        "os.write(fd, b'10 starting\\n')\n"
        "os.write(fd, b'not a progress line\\n')\n"
        "os.write(fd, b'40 loading\\n150\\n')\n"
    )
    outcome, ctx = await run(executor, {"code": code})
    assert outcome.error is None
    # Only the latest valid line of what one read brings counts: "40 loading" came in one
    # write with "150", so it is never reported; "10 starting" is, unless a read took it
    # together with the rest.
    assert ctx.progress in ([(10, "starting"), (100, None)], [(100, None)])


async def test_progress_from_bash_and_node(executor: CodeExecutor) -> None:
    _, ctx = await run(
        executor, {"code": 'echo "55 half" >&"$DEEPEXEC_PROGRESS_FD"', "language": "bash"}
    )
    assert ctx.progress == [(55, "half")]
    js = 'require("fs").writeSync(Number(process.env.DEEPEXEC_PROGRESS_FD), "70 js\\n");'
    _, ctx = await run(executor, {"code": js, "language": "javascript"})
    assert ctx.progress == [(70, "js")]


async def test_ten_concurrent_jobs_get_their_own_outputs(executor: CodeExecutor) -> None:
    async def one(i: int) -> tuple[int, Outcome]:
        outcome, _ = await run(
            executor, {"code": f"import time; time.sleep(0.1); print('job {i}')"}
        )
        return i, outcome

    results = await asyncio.gather(*(one(i) for i in range(10)))
    for i, outcome in results:
        assert outcome.result is not None and outcome.result["stdout"] == f"job {i}\n"


async def test_no_sandbox_process_or_zombie_left_after_jobs(executor: CodeExecutor) -> None:
    # Zombies adopted earlier in this process (servers other tests killed) are not ours.
    before = set(sandbox_uid_processes())
    await run(executor, {"code": "sleep 0.1 & echo done", "language": "bash"})
    await run(executor, {"code": "sleep 5", "language": "bash"}, timeout=0.3)
    # Zombies count too: the server adopts and reaps the sandbox init instead of leaving it to
    # the host's (lazy, ≈1.5 s here) pid 1.
    deadline = time.monotonic() + 0.3
    while set(sandbox_uid_processes()) - before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert set(sandbox_uid_processes()) - before == set()


# --- host without a sandbox -------------------------------------------------------------------


async def test_unavailable_sandbox_refuses_jobs_without_failing_start(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, work_dir=str(tmp_path / "link"))
    (tmp_path / "link").symlink_to(tmp_path)  # an unusable work root
    ex = CodeExecutor(settings)
    await ex.start()  # must not raise
    outcome, _ = await run(ex, {"code": "print(1)"})
    assert outcome.error is not None
    assert outcome.error.type == ErrorType.INTERNAL
    assert outcome.error.message.startswith("sandbox unavailable: work dir unusable")
    assert "scripts/setup-sandbox.sh" in outcome.error.message
    assert ex.describe()["sandbox"]["mode"] == "unavailable"


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "loc", "fragment"),
    [
        ({}, ["data", "code"], "required"),
        ({"code": 1}, ["data", "code"], "string"),
        ({"code": "x" * (1024 * 1024 + 1)}, ["data", "code"], "longer than"),
        ({"code": "", "language": "cobol"}, ["data", "language"], "python, javascript, bash"),
        ({"code": "", "stdin": 5}, ["data", "stdin"], "string"),
        ({"code": "", "stdin": "x" * (1024 * 1024 + 1)}, ["data", "stdin"], "longer than"),
        ({"code": "", "args": "a"}, ["data", "args"], "list"),
        ({"code": "", "args": ["a"] * 101}, ["data", "args"], "at most 100"),
        ({"code": "", "args": ["a", 2]}, ["data", "args", 1], "string"),
        ({"code": "", "env": []}, ["data", "env"], "object"),
        ({"code": "", "env": {"1BAD": "x"}}, ["data", "env", "1BAD"], "name must match"),
        ({"code": "", "env": {"PATH": "/x"}}, ["data", "env", "PATH"], "reserved"),
        ({"code": "", "env": {"HOME": "/x"}}, ["data", "env", "HOME"], "reserved"),
        ({"code": "", "env": {"LD_PRELOAD": "x"}}, ["data", "env", "LD_PRELOAD"], "reserved"),
        (
            {"code": "", "env": {"DEEPEXEC_PROGRESS_FD": "1"}},
            ["data", "env", "DEEPEXEC_PROGRESS_FD"],
            "reserved",
        ),
        ({"code": "", "env": {"A": 1}}, ["data", "env", "A"], "string"),
        ({"code": "", "env": {f"V{i}": "x" for i in range(65)}}, ["data", "env"], "at most 64"),
        ({"code": "", "timeout_s": 3, "net": True}, ["data", "net"], "['net', 'timeout_s']"),
        ({"code": "", "limits": []}, ["data", "limits"], "object"),
        ({"code": "", "limits": {"cpu": 1}}, ["data", "limits", "cpu"], "unknown limit"),
        ({"code": "", "limits": {"memory_mb": 0}}, ["data", "limits", "memory_mb"], "positive"),
        ({"code": "", "limits": {"memory_mb": True}}, ["data", "limits", "memory_mb"], "positive"),
        (
            {"code": "", "limits": {"memory_mb": 999999}},
            ["data", "limits", "memory_mb"],
            "memory_mb 999999 exceeds the maximum 8192",
        ),
        (
            {"code": "", "limits": {"cpu_time_s": 3601}},
            ["data", "limits", "cpu_time_s"],
            "exceeds the maximum 3600",
        ),
        (
            {"code": "", "limits": {"max_processes": 5000}},
            ["data", "limits", "max_processes"],
            "exceeds the maximum 1024",
        ),
        (
            {"code": "", "limits": {"max_output_bytes": 1 << 30}},
            ["data", "limits", "max_output_bytes"],
            "exceeds the maximum",
        ),
        (
            {"code": "", "limits": {"max_file_size_mb": 4096}},
            ["data", "limits", "max_file_size_mb"],
            "exceeds the maximum 1024",
        ),
        ({"code": "", "files": []}, ["data", "files"], "object"),
        ({"code": "", "files": {"../x": "a"}}, ["data", "files", "../x"], "'..'"),
        ({"code": "", "files": {"a/../../x": "a"}}, ["data", "files", "a/../../x"], "'..'"),
        ({"code": "", "files": {"/etc/x": "a"}}, ["data", "files", "/etc/x"], "relative"),
        ({"code": "", "files": {"a//b": "a"}}, ["data", "files", "a//b"], "empty"),
        ({"code": "", "files": {"a": 1}}, ["data", "files", "a"], "base64"),
        (
            {"code": "", "files": {"a": {"content": "!!", "encoding": "base64"}}},
            ["data", "files", "a", "content"],
            "not valid base64",
        ),
        ({"code": "", "files": {"main.py": "x"}}, ["data", "files", "main.py"], "program's own"),
        ({"code": "", "files": {"a": "x", "a/b": "y"}}, ["data", "files", "a/b"], "parent"),
        (
            {"code": "", "files": {f"f{i}": "" for i in range(101)}},
            ["data", "files"],
            "at most 100",
        ),
        (
            {"code": "", "files": {"a": "x" * (2 * 1024 * 1024 + 1)}},
            ["data", "files"],
            "total more than",
        ),
    ],
)
def test_validation_names_the_bad_field(
    data: dict[str, Any], loc: list[Any], fragment: str
) -> None:
    ex = CodeExecutor(Settings())
    with pytest.raises(JobDataError) as info:
        ex.validate(data, 10)
    assert info.value.details[0]["loc"] == loc
    assert fragment in info.value.message


def test_the_sdk_declares_the_limits_the_server_sets() -> None:
    assert LIMIT_NAMES == CODE_LIMIT_NAMES


def test_validation_normalises_aliases_and_defaults() -> None:
    ex = CodeExecutor(Settings())
    assert ex.validate({"code": "echo", "language": "Shell"}, 10) == {
        "code": "echo", "language": "bash", "stdin": "", "args": [], "env": {}, "files": {},
        "limits": {
            "cpu_time_s": None, "memory_mb": 512, "max_processes": 128,
            "max_output_bytes": 1024 * 1024, "max_file_size_mb": 64, "disk_mb": 256,
        },
    }  # fmt: skip
    limited = ex.validate({"code": "", "limits": {"memory_mb": 256, "cpu_time_s": 2}}, 10)
    assert limited["limits"]["memory_mb"] == 256
    assert limited["limits"]["cpu_time_s"] == 2
    files = ex.validate(
        {
            "code": "",
            "files": {"d/a.txt": "hé", "b.bin": {"content": "/wA=", "encoding": "base64"}},
        },
        10,
    )["files"]
    assert files == {"d/a.txt": "hé", "b.bin": {"content": "/wA=", "encoding": "base64"}}
    assert ex.validate({"code": "1"}, 10)["language"] == "python"
    assert ex.validate({"code": "1", "language": "nodejs"}, 10)["language"] == "javascript"


# --- the sandbox's one call -------------------------------------------------------------------


async def test_the_sandbox_runs_a_program_through_its_one_call(tmp_path: Path) -> None:
    """``Sandbox.run(Program, JobLimits)``, the seam the executor uses: files written into the
    work dir, stdin, the job's environment, live output, the cgroup's figures."""
    from deepexec_server.executors.limits import LimitPolicy
    from deepexec_server.executors.sandbox import (
        Program,
        new_job_dir,
        remove_job_dir,
        start_host,
    )

    settings = Settings(data_dir=tmp_path / "data", credentials_file=tmp_path / "c" / "c.json")
    host = await asyncio.to_thread(start_host, settings)
    if host.problem or host.work_root is None:
        pytest.skip(f"sandbox unavailable here: {host.problem}")
    limits = LimitPolicy.from_settings(settings).defaults
    job = new_job_dir(host.work_root, "seam", host.sandbox.run_as, limits.disk_mb << 20,
                      host.mount_job_dirs)  # fmt: skip
    seen: list[tuple[str, str]] = []
    code = b"import os, sys\nprint(sys.stdin.read(), os.environ['GREETING'], os.listdir('d'))\n"
    try:
        result = await host.sandbox.run(
            Program(
                ["/usr/bin/python3", "main.py"], job, 10, files={"main.py": code, "d/f": b"x"},
                stdin=b"hello", env={"GREETING": "hi"},
                on_output=lambda stream, text: seen.append((stream, text)),
            ),
            limits,
        )  # fmt: skip
    finally:
        remove_job_dir(job)
    assert (result.exit_code, result.signal, result.timed_out) == (0, None, False)
    assert result.stdout == "hello hi ['f']\n"
    assert "".join(text for stream, text in seen if stream == "stdout") == result.stdout
    assert (result.stats is not None) == (host.sandbox.cgroups is not None)
    assert not job.path.exists()


# --- the unsafe launch path (--unsafe-no-sandbox) ---------------------------------------------


@pytest.mark.parametrize("drop_by", ["setpriv", "spawn"])
async def test_unsandboxed_launch_still_drops_uid_and_kills_its_group(drop_by: str) -> None:
    """What --unsafe-no-sandbox runs: no namespaces, but a uid drop (by setpriv after a vfork,
    or by the spawn when setpriv is missing), rlimits and a group kill."""
    from deepexec_server.executors.sandbox.argv import launcher_argv
    from deepexec_server.executors.sandbox.identity import resolve_run_as
    from deepexec_server.executors.sandbox.probe import find_setpriv
    from deepexec_server.executors.sandbox.supervise import RunRequest, run_program

    run_as = resolve_run_as("deepexec-sandbox")
    setpriv = find_setpriv() if drop_by == "setpriv" else None
    assert drop_by == "spawn" or setpriv is not None
    marker = "unsafemark" + secrets.token_hex(4)
    argv = [
        *launcher_argv(
            cpu_seconds=31, file_size_bytes=64 << 20, gate=False, setpriv=setpriv, run_as=run_as
        ),
        "/bin/bash",
        "-c",
        'id -u; /usr/bin/python3 -c "import time; time.sleep(30)" "$0" & wait',
        marker,
    ]
    req = RunRequest(
        argv=argv, env={"PATH": "/usr/bin:/bin"}, cwd="/", stdin=b"", timeout=0.5,
        max_output_bytes=1024, run_as=None if setpriv else run_as, sandboxed=False,
    )  # fmt: skip
    ctx = FakeContext()
    started = time.monotonic()
    task = asyncio.create_task(
        run_program(req, ctx.cancel_requested, ctx.emit_output, lambda _u: None)
    )
    while not live_processes_with(marker) and time.monotonic() - started < 0.4:
        await asyncio.sleep(0.02)
    assert live_processes_with(marker)  # positive control: the background child runs
    result = await task
    assert time.monotonic() - started < 2
    assert result.timed_out and result.signal == "SIGKILL"
    expected_uid = str(run_as.uid) if run_as else str(os.getuid())
    assert result.stdout.strip() == expected_uid
    assert live_processes_with(marker) == []


# --- every language ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LanguageCase:
    """Programs for one language: ``echo`` prints ``<language> <stdin word> <first arg>``;
    ``fail`` writes ``boom`` to stderr and exits 3; ``broken`` does not compile."""

    echo: str
    fail: str
    broken: str | None = None


LANGUAGE_CASES = {
    "python": LanguageCase(
        "import sys\nprint('python', sys.stdin.readline().strip(), sys.argv[1])\n",
        "import sys\nsys.stderr.write('boom\\n')\nsys.exit(3)\n",
    ),
    "javascript": LanguageCase(
        "const w = require('fs').readFileSync(0, 'utf8').trim();\n"
        "console.log(`javascript ${w} ${process.argv[2]}`);\n",
        "console.error('boom');\nprocess.exit(3);\n",
    ),
    "bash": LanguageCase('read -r w\necho "bash $w $1"\n', "echo boom >&2\nexit 3\n"),
    "c": LanguageCase(
        "#include <stdio.h>\nint main(int argc, char **argv) {\n  char w[64];\n"
        '  if (scanf("%63s", w) != 1) return 9;\n  printf("c %s %s\\n", w, argv[1]);\n}\n',
        '#include <stdio.h>\nint main(void) { fputs("boom\\n", stderr); return 3; }\n',
        "int main(void) { return undeclared_name; }\n",
    ),
    "cpp": LanguageCase(
        "#include <iostream>\n#include <string>\nint main(int argc, char **argv) {\n"
        "  std::string w; std::cin >> w;\n"
        '  std::cout << "cpp " << w << " " << argv[1] << "\\n";\n}\n',
        '#include <iostream>\nint main() { std::cerr << "boom\\n"; return 3; }\n',
        "int main() { return undeclared_name; }\n",
    ),
    "java": LanguageCase(
        "public class Main {\n  public static void main(String[] a) throws Exception {\n"
        "    var in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in));\n"
        '    System.out.println("java " + in.readLine() + " " + a[0]);\n  }\n}\n',
        "public class Main {\n  public static void main(String[] a) {\n"
        '    System.err.println("boom");\n    System.exit(3);\n  }\n}\n',
        "public class Main { static int f() { return undeclared_name; } }\n",
    ),
    "rust": LanguageCase(
        "use std::io::BufRead;\nfn main() {\n  let mut w = String::new();\n"
        "  std::io::stdin().lock().read_line(&mut w).unwrap();\n"
        '  println!("rust {} {}", w.trim(), std::env::args().nth(1).unwrap());\n}\n',
        'fn main() {\n  eprintln!("boom");\n  std::process::exit(3);\n}\n',
        "fn main() { let x: i32 = undeclared_name; }\n",
    ),
    "go": LanguageCase(
        'package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n\t"strings"\n)\n\n'
        "func main() {\n\tw, _ := bufio.NewReader(os.Stdin).ReadString('\\n')\n"
        '\tfmt.Println("go", strings.TrimSpace(w), os.Args[1])\n}\n',
        'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\n'
        'func main() {\n\tfmt.Fprintln(os.Stderr, "boom")\n\tos.Exit(3)\n}\n',
        "package main\n\nfunc main() { undeclared_name() }\n",
    ),
}


def test_set_up_installs_every_listed_language(executor: CodeExecutor) -> None:
    """scripts/setup-sandbox.sh installs each toolchain, so a set-up host offers them all."""
    offered = {lang["name"]: lang["version"] for lang in executor.describe()["languages"]}
    assert sorted(offered) == sorted(LANGUAGE_CASES)
    assert all(version[:1].isdigit() for version in offered.values()), offered


@pytest.mark.parametrize("language", list(LANGUAGE_CASES))
async def test_each_language_echoes_stdin_and_args(executor: CodeExecutor, language: str) -> None:
    data = {"code": LANGUAGE_CASES[language].echo, "language": language, "stdin": "w\n"}
    outcome, ctx = await run(executor, {**data, "args": ["a"]}, timeout=60)
    assert outcome.error is None, outcome
    assert outcome.result is not None
    assert outcome.result["stdout"] == f"{language} w a\n"
    assert outcome.result["exit_code"] == 0
    assert ctx.streamed("stdout") == f"{language} w a\n"
    compiled = LANGUAGE_CASES[language].broken is not None
    assert outcome.result["compile_output"] == ("" if compiled else None)


@pytest.mark.parametrize("language", list(LANGUAGE_CASES))
async def test_each_language_reports_a_runtime_error_with_its_exit_code(
    executor: CodeExecutor, language: str
) -> None:
    outcome, _ = await run(
        executor, {"code": LANGUAGE_CASES[language].fail, "language": language}, timeout=60
    )
    assert outcome.error is not None and outcome.error.type == ErrorType.RUNTIME_ERROR
    assert outcome.error.message == "exited with code 3"
    assert outcome.result is not None
    assert outcome.result["exit_code"] == 3
    assert outcome.result["stderr"] == "boom\n"


@pytest.mark.parametrize(
    "language", [name for name, case in LANGUAGE_CASES.items() if case.broken is not None]
)
async def test_each_compiled_language_reports_a_compile_error(
    executor: CodeExecutor, language: str
) -> None:
    broken = LANGUAGE_CASES[language].broken
    assert broken is not None
    outcome, ctx = await run(executor, {"code": broken, "language": language}, timeout=60)
    assert outcome.error is not None and outcome.error.type == ErrorType.COMPILE_ERROR
    assert outcome.result is not None
    assert "undeclared_name" in outcome.result["compile_output"]
    assert outcome.result["stdout"] == "" and outcome.result["exit_code"] is None
    assert ctx.outputs == []  # the compiler's output is not the program's


async def test_compiled_program_is_sandboxed_like_any_other(executor: CodeExecutor) -> None:
    code = (
        "#include <stdio.h>\n#include <errno.h>\n#include <sys/socket.h>\n#include <fcntl.h>\n"
        "int main(void) {\n"
        '  int s = socket(AF_INET, SOCK_STREAM, 0);\n  printf("socket %d %d\\n", s, errno);\n'
        '  int f = open("/etc/shadow", O_RDONLY);\n  printf("shadow %d\\n", f);\n  return 0;\n}\n'
    )
    outcome, _ = await run(executor, {"code": code, "language": "c"})
    assert outcome.result is not None
    assert outcome.result["stdout"] == "socket -1 1\nshadow -1\n"
