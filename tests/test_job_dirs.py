"""Job work dirs whatever a job leaves in them: removed without recursion, swept at start
without ever stopping the server, and their names and files reported safely.

Iterative walks against real directory trees (3,000 levels deep: a path longer than
PATH_MAX), and the real server (``deepexec serve``) killed with SIGKILL and started again.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepexec_sdk import DeepExecClient
from deepexec_server.executors.code_files import collect_output_files
from deepexec_server.executors.sandbox.probe import _probe_disk
from deepexec_server.executors.sandbox.trees import remove_tree
from deepexec_server.executors.sandbox.workdirs import (
    DiskGauge,
    JobDir,
    ensure_work_root,
    mounts_under,
    sweep_stale_job_dirs,
    unmount,
)
from deepexec_server.settings import Settings
from tests.conftest import wait_for_no_processes_of_job
from tests.serverproc import ServerProcess

PY = "code_execution"
DEPTH = 3000
needs_sandbox = pytest.mark.skipif(
    shutil.which("bwrap") is None or os.geteuid() != 0,
    reason="needs bubblewrap and root (uid drop, cgroups, mounts)",
)


def dead_pid() -> int:
    """A pid that cannot be alive: above the kernel's pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def make_deep_tree(top: Path, depth: int = DEPTH) -> None:
    """``top/d/d/.../d`` ``depth`` levels deep with a file at each level, by directory fd (the
    full path is longer than PATH_MAX)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as f:
                f.write(b"x")
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


@pytest.fixture
def work_root() -> Iterator[Path]:
    """A private work root the sandbox uid can traverse (pytest's tmp dirs are 0700)."""
    root = ensure_work_root(Path(f"/var/tmp/deepexec-test-{secrets.token_hex(4)}"))
    yield root
    for point in mounts_under(root):
        unmount(point)
    remove_tree(root)


# --- walks (real directories) -----------------------------------------------------------------


def test_remove_tree_removes_a_tree_deeper_than_path_max(tmp_path: Path) -> None:
    top = tmp_path / "deep"
    make_deep_tree(top)
    (tmp_path / "outside").write_text("kept")
    (top / "link").symlink_to(tmp_path / "outside")
    remove_tree(top)
    assert not top.exists()
    assert (tmp_path / "outside").read_text() == "kept"  # the symlink was not followed


def test_sweep_removes_a_deep_leftover_and_goes_on_past_what_it_cannot_remove(
    tmp_path: Path,
) -> None:
    root = ensure_work_root(tmp_path / "work")
    deep = root / f"{dead_pid()}-job_deep-0000"
    make_deep_tree(deep)
    stray = root / f"{dead_pid()}-job_file-0000"
    stray.write_text("a file, not a dir")
    assert sorted(sweep_stale_job_dirs(root)) == sorted([deep, stray])
    assert list(root.iterdir()) == []


def test_mountinfo_points_under_the_root_are_found_deepest_first() -> None:
    info = (
        b"27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        b"90 27 0:40 / /w/1-a rw - tmpfs deepexec-job rw\n"
        b"91 90 0:41 / /w/1-a/in\\040side rw - tmpfs x rw\n"
        b"92 27 0:42 / /wx/2-b rw - tmpfs deepexec-job rw\n"
    )
    assert mounts_under(Path("/w"), info) == [Path("/w/1-a/in side"), Path("/w/1-a")]


def test_collect_output_files_reports_bad_names_and_depth(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "ok.txt").write_text("fine")
    with open(os.path.join(os.fsencode(outputs), b"\xffname"), "wb") as f:
        f.write(b"raw")
    make_deep_tree(outputs / "d", depth=40)
    got = collect_output_files(outputs, None)
    assert got.files["ok.txt"] == b"fine"
    assert "\udcffname" not in got.files
    assert got.files["d/f"] == b"x"
    assert max(name.count("/") for name in got.files) == 32
    assert {"path": "\\xffname", "reason": "file name is not valid UTF-8"} in got.skipped
    deep = [s for s in got.skipped if s["reason"] == "deeper than 32 directory levels"]
    assert deep == [{"path": "d/" * 33, "reason": "deeper than 32 directory levels"}]


def test_without_a_tmpfs_the_gauge_measures_the_dir(tmp_path: Path) -> None:
    job = JobDir(tmp_path, 1 << 20, mounted=False)
    (tmp_path / "half").write_bytes(b"x" * (512 << 10))
    assert DiskGauge(job).final() is None
    (tmp_path / "more").write_bytes(b"x" * (600 << 10))
    assert DiskGauge(job).final() == "filled its disk quota of 1 MB"


def test_without_a_tmpfs_the_running_check_walks_in_the_background(tmp_path: Path) -> None:
    gauge = DiskGauge(JobDir(tmp_path, 1 << 20, mounted=False))
    assert gauge.check() is None  # starts the first walk; the dir is empty
    (tmp_path / "big").write_bytes(b"x" * (2 << 20))
    deadline = time.monotonic() + 10
    while gauge.check() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert gauge.final() == "filled its disk quota of 1 MB"


def test_probe_says_what_it_falls_back_to_without_mounts() -> None:
    line = _probe_disk(Settings(), (False, "server is not root (Operation not permitted)"))
    assert not line.ok and line.fatal is None
    assert line.render().startswith("MISSING disk_quota: cannot mount a tmpfs per job dir")
    assert "falls back to measuring each job dir" in line.render()


# --- the real server --------------------------------------------------------------------------


@needs_sandbox
def test_server_restarts_after_kill_9_with_a_3000_deep_job_dir_left(
    tmp_path: Path,
    work_root: Path,
) -> None:
    home = tmp_path / "home"
    env = {"DEEPEXEC_WORK_DIR": str(work_root)}
    srv = ServerProcess(home, env=env).start()
    code = (
        "import os, time\n"
        f"for _ in range({DEPTH}):\n"
        "    os.mkdir('d')\n"
        "    os.chdir('d')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    try:
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as c:
            job = c.submit_mcp_job("deep", PY, {"code": code}, timeout=90)
            deadline = time.monotonic() + 30
            for event in c.stream_mcp_job_events(job.job_id):
                if event.type == "output" and "ready" in (event.text or ""):
                    break
                assert time.monotonic() < deadline
        left = list(work_root.iterdir())
        assert len(left) == 1, "positive control: the running job's dir exists"
    finally:
        srv.kill9()
    assert wait_for_no_processes_of_job(job.job_id, timeout=5) == []

    srv2 = ServerProcess(home, env=env)
    srv2.port = srv.port
    srv2.start()  # raised "Application startup failed" when the sweep recursed
    try:
        assert not left[0].exists()
        assert left[0] not in mounts_under(work_root)
        assert "removed stale work dir" in srv2.log()
        with DeepExecClient(base_url=srv2.base_url, api_key=srv2.api_key) as c:
            crashed = c.get_mcp_job_status(job.job_id)
            assert crashed.status == "FAILED"
            assert crashed.error is not None and crashed.error.type == "interrupted"
            done = c.execute_code_and_wait("print('after the crash')")
            assert done.status == "COMPLETED", done.error
            assert done.result is not None and done.result["stdout"] == "after the crash\n"
    finally:
        srv2.stop()


@needs_sandbox
def test_server_starts_with_a_deep_plain_leftover_dir(
    tmp_path: Path,
    work_root: Path,
) -> None:
    leftover = work_root / f"{dead_pid()}-job_old-0000"
    make_deep_tree(leftover)
    srv = ServerProcess(tmp_path / "home", env={"DEEPEXEC_WORK_DIR": str(work_root)}).start()
    try:
        assert not leftover.exists()
    finally:
        srv.stop()


@needs_sandbox
def test_a_non_utf8_output_name_ends_the_job_with_the_name_reported(
    client: DeepExecClient,
) -> None:
    code = (
        "open(b'outputs/\\xff.txt', 'wb').write(b'x')\n"
        "open('outputs/ok.txt', 'w').write('fine')\n"
        "print('wrote')\n"
    )
    job = client.submit_mcp_job("bad-name", PY, {"code": code}, timeout=10)
    done = client.wait_for_mcp_job_completion(job.job_id, max_wait_time=20)
    assert done.status == "COMPLETED", done.error
    assert done.result is not None
    assert done.result["stdout"] == "wrote\n"
    assert done.result["files"] == {"ok.txt": "fine"}
    assert done.result["files_skipped"] == [
        {"path": "\\xff.txt", "reason": "file name is not valid UTF-8"}
    ]
