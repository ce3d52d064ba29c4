"""The sandbox's deciding parts: argument lists, exit decoding, output capture, progress
parsing, work dirs, languages, the host probe. Pure functions, plus real directories and one
real probe of this host."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepexec_server.executors import languages as langs
from deepexec_server.executors.code import decide_outcome
from deepexec_server.executors.limits import JobLimits
from deepexec_server.executors.sandbox import unavailable_message
from deepexec_server.executors.sandbox.argv import (
    SANDBOX_HOME,
    bwrap_argv,
    env_name_problem,
    launcher_argv,
    masked_dirs,
    sandbox_env,
    system_mounts,
)
from deepexec_server.executors.sandbox.capture import StreamCapture
from deepexec_server.executors.sandbox.identity import RunAs
from deepexec_server.executors.sandbox.probe import ProbeLine, probe_host, sandbox_problem
from deepexec_server.executors.sandbox.progress import (
    MAX_LINE_BYTES,
    ProgressLineBuffer,
    ProgressUpdate,
    parse_progress_line,
)
from deepexec_server.executors.sandbox.reaping import parse_child_pid
from deepexec_server.executors.sandbox.result import RunResult, decode_exit, is_bwrap_failure
from deepexec_server.executors.sandbox.workdirs import (
    WorkDirError,
    ensure_work_root,
    new_job_dir,
    sweep_stale_job_dirs,
)
from deepexec_server.settings import Settings

# --- progress ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"40 loading", ProgressUpdate(40, "loading")),
        (b"40", ProgressUpdate(40, None)),
        (b"12.7 step two  ", ProgressUpdate(12, "step two")),
        (b"55% half", ProgressUpdate(55, "half")),
        (b"150 over", ProgressUpdate(100, "over")),
        (b"-3 under", ProgressUpdate(0, "under")),
        (b"nan x", None),
        (b"inf", None),
        (b"loading 40", None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
)
def test_progress_line_parsing(line: bytes, expected: ProgressUpdate | None) -> None:
    assert parse_progress_line(line) == expected


def test_progress_message_is_bounded() -> None:
    update = parse_progress_line(b"5 " + b"m" * 5000)
    assert update is not None and update.message is not None and len(update.message) == 200


def test_progress_buffer_joins_split_lines_and_drops_overlong_ones() -> None:
    buf = ProgressLineBuffer()
    assert buf.feed(b"1") == []
    assert buf.feed(b"0 a\n2") == [ProgressUpdate(10, "a")]
    assert buf.feed(b"0\n" + b"9" * (MAX_LINE_BYTES + 1)) == [ProgressUpdate(20, None)]
    assert buf.feed(b"9" * 10_000) == []  # still inside the overlong line: dropped
    assert buf.feed(b"\n30 ok\n") == [ProgressUpdate(30, "ok")]


@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_progress_buffer_memory_stays_bounded(chunks: list[bytes]) -> None:
    buf = ProgressLineBuffer()
    for chunk in chunks:
        for update in buf.feed(chunk):
            assert 0 <= update.percent <= 100
        assert len(buf._buf) <= MAX_LINE_BYTES


# --- output capture ---------------------------------------------------------------------------


def test_capture_keeps_the_first_bytes_and_flags_the_rest() -> None:
    cap = StreamCapture(10)
    assert cap.feed(b"hello ") == "hello "
    assert cap.feed(b"world and more") == "worl"
    assert cap.feed(b"dropped") == ""
    assert cap.text() == "hello worl" and cap.truncated and cap.total_bytes == 27


def test_capture_decodes_split_utf8_and_replaces_invalid_bytes() -> None:
    cap = StreamCapture(100)
    euro = "€".encode()
    assert cap.feed(euro[:1]) == ""
    assert cap.feed(euro[1:] + b"\xff!") == "€\ufffd!"
    assert cap.finish() == ""
    assert not cap.truncated


def test_capture_exactly_at_the_limit_is_not_truncated() -> None:
    cap = StreamCapture(3)
    cap.feed(b"abc")
    assert not cap.truncated
    cap.feed(b"")
    assert not cap.truncated


# --- exit status and outcome ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "via_bwrap", "expected"),
    [
        (0, True, (0, None)),
        (3, True, (3, None)),
        (137, True, (None, "SIGKILL")),
        (139, True, (None, "SIGSEGV")),
        (152, True, (None, "SIGXCPU")),
        (137, False, (137, None)),
        (-9, False, (None, "SIGKILL")),
        (-9, True, (None, "SIGKILL")),
        (255, True, (255, None)),
    ],
)
def test_decode_exit(
    returncode: int, via_bwrap: bool, expected: tuple[int | None, str | None]
) -> None:
    assert decode_exit(returncode, via_bwrap) == expected


def test_bwrap_failure_is_recognised_only_by_its_own_message() -> None:
    assert is_bwrap_failure(1, b"bwrap: Creating new namespace failed: ...\n")
    assert not is_bwrap_failure(1, b"Traceback ...")
    assert not is_bwrap_failure(2, b"bwrap: x")


def _run(**overrides: object) -> RunResult:
    fields: dict[str, object] = {
        "returncode": 0, "exit_code": 0, "signal": None, "stdout": "out", "stderr": "",
        "stdout_truncated": False, "stderr_truncated": False, "timed_out": False,
        "canceled": False, "wall_time_ms": 5, "sandbox_failed": False,
    }  # fmt: skip
    fields.update(overrides)
    return RunResult(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "error_type", "message", "canceled"),
    [
        ({}, None, None, False),
        ({"exit_code": 2, "returncode": 2}, "runtime_error", "exited with code 2", False),
        ({"exit_code": None, "signal": "SIGSEGV"}, "runtime_error", "killed by SIGSEGV", False),
        (
            {"exit_code": None, "signal": "SIGXCPU"},
            "cpu_limit",
            "exceeded the CPU time limit",
            False,
        ),
        (
            {"timed_out": True, "signal": "SIGKILL"},
            "timeout",
            "exceeded the 2.5 s time limit",
            False,
        ),
        ({"canceled": True, "timed_out": False}, None, None, True),
        (
            {"sandbox_failed": True, "stderr": "bwrap: no\n"},
            "internal_error",
            "sandbox failed to start: bwrap: no",
            False,
        ),
    ],
)
def test_decide_outcome(
    overrides: dict[str, object], error_type: str | None, message: str | None, canceled: bool
) -> None:
    outcome = decide_outcome(_run(**overrides), "python", 2.5)
    assert outcome.canceled is canceled
    assert (outcome.error.type if outcome.error else None) == error_type
    assert (outcome.error.message if outcome.error else None) == message
    assert outcome.result is not None
    assert set(outcome.result) == {
        "stdout", "stderr", "exit_code", "signal", "timed_out", "stdout_truncated",
        "stderr_truncated", "wall_time_ms", "language",
    }  # fmt: skip
    assert outcome.result["stdout"] == "out"


def test_unavailable_message_says_how_to_fix() -> None:
    msg = unavailable_message("bwrap not found")
    assert msg == (
        "sandbox unavailable: bwrap not found; install bubblewrap (scripts/setup-sandbox.sh) "
        "or start with --unsafe-no-sandbox"
    )


# --- command lines and environment ------------------------------------------------------------


def test_bwrap_argv_isolates_and_runs_the_command_last() -> None:
    system = ["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin"]
    argv = bwrap_argv(
        "/usr/bin/bwrap", job_dir="/w/j1", system=system, masks=["/tmp", "/etc/data"],
        env={"PATH": "/usr/bin", "A": "b"}, command=["/usr/bin/python3", "main.py"],
        status_fd=7,
    )  # fmt: skip
    joined = " ".join(argv)
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                 "--new-session", "--clearenv", "--ro-bind /usr /usr --symlink usr/bin /bin",
                 "--proc /proc", "--dev /dev", "--json-status-fd 7",
                 "--hostname sandbox"):  # fmt: skip
        assert flag in joined
    assert "--ro-bind / /" not in joined and "/sys" not in argv
    assert "--share-net" not in argv
    assert f"--bind /w/j1 {SANDBOX_HOME}" in joined and f"--chdir {SANDBOX_HOME}" in joined
    assert "--tmpfs /tmp" in joined and "--tmpfs /etc/data" in joined
    # The masks cover parts of the system trees, so they are mounted after them.
    assert argv.index("/etc/data") > argv.index("/usr")
    # --clearenv comes before the variables it would otherwise wipe.
    assert argv.index("--clearenv") < argv.index("--setenv")
    assert argv[-3:] == ["--", "/usr/bin/python3", "main.py"]
    with_net = bwrap_argv(
        "/b", job_dir="/j", system=[], masks=[], env={}, command=["x"], share_net=True
    )
    assert "--share-net" in with_net


def test_system_mounts_bind_directories_and_keep_symlinks(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    trees = [str(tmp_path / name) for name in ("usr", "bin", "missing")]
    assert system_mounts(trees) == [
        "--ro-bind", trees[0], trees[0], "--symlink", "usr/bin", trees[1],
    ]  # fmt: skip


#: The CPU limit a job without ``cpu_time_s`` gets (just above its wall clock).
_DEFAULTS = JobLimits(
    cpu_time_s=None, memory_mb=512, max_processes=128, max_output_bytes=1 << 20,
    max_file_size_mb=64, disk_mb=256,
)  # fmt: skip


def _launch(argv: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=10, check=False)


def test_launcher_sets_the_rlimits_and_never_limits_address_space() -> None:
    prefix = launcher_argv(cpu_seconds=6, file_size_bytes=1_000_000, open_files=64, gate=False)
    limits = _launch([*prefix, "/bin/cat", "/proc/self/limits"]).stdout.decode()
    rows = {line[:26].strip(): line[26:].split()[:2] for line in limits.splitlines()[1:]}
    assert rows["Max cpu time"] == ["6", "7"]
    assert rows["Max file size"] == ["1000448", "1000448"]  # rounded up to 512-byte blocks
    assert rows["Max open files"] == ["64", "64"]
    assert rows["Max core file size"] == ["0", "0"]
    assert rows["Max address space"] == ["unlimited", "unlimited"]


def test_launcher_gate_holds_until_the_first_line_and_keeps_the_rest_of_stdin() -> None:
    prefix = launcher_argv(
        cpu_seconds=_DEFAULTS.cpu_seconds(5), file_size_bytes=64 << 20, gate=True
    )
    assert _launch([*prefix, "/bin/cat"], b"\nthe job's stdin\n").stdout == b"the job's stdin\n"
    hung_up = _launch([*prefix, "/bin/echo", "ran"], b"")
    assert hung_up.returncode == 111 and hung_up.stdout == b""


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop needs root")
def test_launcher_drops_to_the_sandbox_uid_with_no_groups_or_capabilities() -> None:
    run_as = RunAs("deepexec-sandbox", 4321, 4322)
    prefix = launcher_argv(
        cpu_seconds=_DEFAULTS.cpu_seconds(5), file_size_bytes=64 << 20, gate=False,
        setpriv="/usr/bin/setpriv", run_as=run_as,
    )  # fmt: skip
    status = _launch([*prefix, "/bin/cat", "/proc/self/status"]).stdout.decode()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split() == ["4321"] * 4
    assert fields["Gid"].split() == ["4322"] * 4
    assert fields["Groups"].strip() == ""
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(fields[caps], 16) == 0, caps


def test_a_launcher_failure_is_a_sandbox_failure_not_the_programs() -> None:
    prefix = launcher_argv(cpu_seconds=5, file_size_bytes=64 << 20, open_files=1 << 40, gate=False)
    failed = _launch([*prefix, "/bin/echo", "ran"])
    assert failed.returncode == 112 and failed.stdout == b""
    assert is_bwrap_failure(failed.returncode, failed.stderr)
    assert not is_bwrap_failure(112, b"my program's own message\n")


def test_sandbox_env_is_built_from_nothing_and_ignores_reserved_names() -> None:
    env = sandbox_env("/home/sandbox", {"FOO": "1", "PATH": "/evil", "LD_PRELOAD": "x"}, 9)
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/sandbox", "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "FOO": "1",
        "DEEPEXEC_PROGRESS_FD": "9",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "reserved"),
    [("PATH", True), ("HOME", True), ("LD_LIBRARY_PATH", True), ("DEEPEXEC_X", True),
     ("PYTHONPATH", False), ("LANG", False), ("path", False)],
)  # fmt: skip
def test_env_name_problem(name: str, reserved: bool) -> None:
    assert (env_name_problem(name) is not None) is reserved


def test_masked_dirs_cover_service_dirs_only_inside_the_visible_trees(tmp_path: Path) -> None:
    # /usr/share lies inside a visible tree; /var/lib is not shown at all; tmp_path is under
    # the scratch /tmp, which is covered already.
    masks = masked_dirs(
        ["/usr/share", "/usr/share/.", "/var/lib", tmp_path, "/nonexistent/dir", "/"],
        visible=["/usr", "/etc"],
    )
    assert masks == ["/tmp", "/var/tmp", "/home", "/usr/share"]


def test_parse_child_pid() -> None:
    status = b'{ "child-pid": 8980, "mnt-namespace": 1 }\n{ "exit-code": 3 }\n'
    assert parse_child_pid(status) == 8980
    assert parse_child_pid(b"") is None
    assert parse_child_pid(b"garbage\n") is None


# --- work dirs --------------------------------------------------------------------------------


def test_work_root_is_created_traversable_but_not_listable(tmp_path: Path) -> None:
    root = ensure_work_root(tmp_path / "work")
    assert (root.stat().st_mode & 0o777) == 0o711
    job = new_job_dir(root, "job_abc/../x", None).path
    assert job.parent == root and (job.stat().st_mode & 0o777) == 0o700
    assert job.name.startswith(f"{os.getpid()}-job_abcx-")


def test_work_root_refuses_symlinks_and_shared_dirs(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(WorkDirError, match="not a plain directory"):
        ensure_work_root(tmp_path / "link")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(WorkDirError, match="writable by group or others"):
        ensure_work_root(shared)
    if os.geteuid() == 0:
        owned = tmp_path / "owned"
        owned.mkdir()
        os.chown(owned, 65534, 65534)
        with pytest.raises(WorkDirError, match="owned by uid 65534"):
            ensure_work_root(owned)


def test_sweep_removes_only_dirs_of_dead_servers(tmp_path: Path) -> None:
    root = ensure_work_root(tmp_path / "work")
    mine = new_job_dir(root, "live", None).path
    # A pid that cannot be alive: above the kernel's pid_max.
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    stale = root / f"{dead_pid}-job_old-0000"
    stale.mkdir()
    (stale / "f").write_text("x")
    other = root / "1-job_init-0000"  # pid 1 is alive
    other.mkdir()
    assert sweep_stale_job_dirs(root) == [stale]
    assert mine.exists() and other.exists() and not stale.exists()


# --- languages --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("python", "python"), ("PY", "python"), ("python3", "python"), ("js", "javascript"),
     ("node", "javascript"), ("nodejs", "javascript"), ("sh", "bash"), ("shell", "bash"),
     ("c++", "cpp"), ("rs", "rust"), ("golang", "go"), ("cobol", None)],
)  # fmt: skip
def test_language_aliases(name: str, canonical: str | None) -> None:
    lang = langs.resolve_language(name)
    assert (lang.name if lang else None) == canonical


@pytest.mark.parametrize(
    ("output", "version"),
    [("Python 3.11.2\n", "3.11.2"), ("v20.20.2\n", "20.20.2"),
     ("GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)\n", "5.2.15"), ("", "unknown"),
     ("go version go1.19.8 linux/amd64\n", "1.19.8"), ("rustc 1.63.0\n", "1.63.0"),
     ('openjdk version "17.0.15" 2025-04-15\n', "17.0.15")],
)  # fmt: skip
def test_parse_version(output: str, version: str) -> None:
    assert langs.parse_version(output) == version


def test_interpreters_are_system_paths_never_shims() -> None:
    found = langs.detect_interpreters()
    assert "python" in found and found["python"].path in ("/usr/bin/python3", "/bin/python3")
    for interp in found.values():
        assert os.path.isabs(interp.path) and "shims" not in interp.path
        assert interp.version != "unknown"


# --- the host probe ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("bwrap") is None or os.geteuid() != 0, reason="root + bwrap")
def test_probe_reports_each_mechanism_on_this_host() -> None:
    lines = probe_host(Settings())
    assert [line.mechanism for line in lines] == [
        "bubblewrap", "uid_switch", "namespaces", "rlimits", "cgroups", "seccomp", "disk_quota",
    ]  # fmt: skip
    by_name = {line.mechanism: line for line in lines}
    assert by_name["bubblewrap"].ok and "bubblewrap" in by_name["bubblewrap"].detail
    assert by_name["namespaces"].ok
    assert by_name["uid_switch"].ok and "deepexec-sandbox" in by_name["uid_switch"].detail
    # This host (root, cgroup v1 hybrid, libseccomp2): both hardening layers apply.
    assert by_name["cgroups"].ok and "pids.max" in by_name["cgroups"].detail
    assert by_name["seccomp"].ok and "EPERM" in by_name["seccomp"].detail
    assert by_name["disk_quota"].ok and "tmpfs" in by_name["disk_quota"].detail
    assert sandbox_problem(lines) is None
    for line in lines:
        rendered = line.render()
        assert rendered.startswith("OK " if line.ok else "MISSING ")
        if not line.ok:
            assert "falls back to" in rendered


def test_probe_refuses_when_no_unprivileged_user_exists() -> None:
    if os.geteuid() != 0:
        pytest.skip("root only")
    settings = Settings(sandbox_user="no-such-user-xyz")
    lines = probe_host(settings)
    # nobody exists here, so it is used instead, and the line says how to fix it.
    ident = next(line for line in lines if line.mechanism == "uid_switch")
    assert ident.ok and "nobody" in ident.detail and "setup-sandbox.sh" in ident.detail


def test_sandbox_problem_picks_the_first_fatal_line() -> None:
    lines = [
        ProbeLine("bubblewrap", True, "ok"),
        ProbeLine("namespaces", False, "x: code jobs are refused (y)", fatal="x"),
        ProbeLine("seccomp", False, "no: falls back to z"),
    ]
    assert sandbox_problem(lines) == "x"
    assert sandbox_problem(lines[::2]) is None


def test_signal_names_are_real() -> None:
    assert decode_exit(128 + signal.SIGTERM, True) == (None, "SIGTERM")


# --- hardened sandbox: pure parts ---------------------------------------------------------------


def test_cgroup_keyed_files_and_job_names() -> None:
    from deepexec_server.executors.sandbox.cgroups import job_cgroup_name, owner_pid, parse_keyed

    assert parse_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\nbad line\n") == {
        "oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3,
    }  # fmt: skip
    assert parse_keyed(None) == {}
    name = job_cgroup_name("job/../x y")
    assert "/" not in name and owner_pid(name) == os.getpid()
    assert owner_pid("system.slice") is None


def test_bwrap_argv_passes_the_seccomp_fd_before_the_command() -> None:
    argv = bwrap_argv(
        "/usr/bin/bwrap",
        job_dir="/w",
        system=[],
        masks=[],
        env={},
        command=["/bin/true"],
        seccomp_fd=7,
    )
    assert argv[argv.index("--seccomp") + 1] == "7"
    assert argv.index("--seccomp") < argv.index("--")


def test_decide_outcome_with_cgroup_stats_and_limits() -> None:
    from deepexec_server.executors.code import Collected
    from deepexec_server.executors.sandbox.cgroups import CgroupStats

    limits = JobLimits(
        cpu_time_s=1, memory_mb=256, max_processes=128, max_output_bytes=10, max_file_size_mb=64,
        disk_mb=16,
    )  # fmt: skip
    oom = Collected(CgroupStats(5, 262144, True), {}, False, limits)
    out = decide_outcome(_run(exit_code=None, signal="SIGKILL"), "python", 5, oom)
    assert out.error is not None and out.error.type == "memory_limit"
    assert "256 MB" in out.error.message
    assert out.result is not None and out.result["oom_killed"] is True
    fine = Collected(CgroupStats(5, 100, False), {"a": "b"}, False, limits)
    out = decide_outcome(_run(limit_exceeded="cpu_limit"), "python", 5, fine)
    assert out.error is not None and out.error.type == "cpu_limit"
    out = decide_outcome(_run(stdout_truncated=True), "python", 5, fine)
    assert out.error is not None and out.error.type == "output_limit"
    out = decide_outcome(_run(limit_exceeded="disk_limit"), "python", 5, fine)
    assert out.error is not None and out.error.type == "disk_limit"
    assert out.error.message == "filled its disk quota of 16 MB"
    full = Collected(CgroupStats(5, 100, False), {}, False, limits, disk_full="filled it")
    out = decide_outcome(_run(), "python", 5, full)
    assert out.error is not None and out.error.type == "disk_limit"
    assert out.error.message == "filled it"
    out = decide_outcome(_run(), "python", 5, fine)
    assert out.error is None and out.result is not None and out.result["files"] == {"a": "b"}


def test_seccomp_filter_compiles_once_and_denies_network_only_when_asked() -> None:
    from deepexec_server.executors.sandbox.seccomp_filter import compile_filter

    closed = compile_filter(False)
    assert compile_filter(False) is closed
    assert len(compile_filter(True)) < len(closed)


def test_cgroup_probe_says_what_it_falls_back_to_when_unusable(tmp_path: Path) -> None:
    from deepexec_server.executors.sandbox.cgroups import CgroupHost

    host, detail = CgroupHost.detect(root=tmp_path)  # no controllers mounted there
    assert host is None
    assert "neither cgroup v2" in detail


def test_progress_buffer_reports_only_the_latest_valid_line_of_a_chunk() -> None:
    buf = ProgressLineBuffer()
    flood = b"".join(b"%d step %d\n" % (i % 100, i) for i in range(1000))
    assert buf.feed(flood + b"garbage\n" + b"9" * (MAX_LINE_BYTES + 1) + b"\n4") == [
        ProgressUpdate(99, "step 999")
    ]
    assert buf.feed(b"2 done\n") == [ProgressUpdate(42, "done")]
    assert buf.feed(b"nothing valid\nat all\n") == []


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_progress_buffer_latest_update_matches_a_line_by_line_reading(
    chunks: list[bytes],
) -> None:
    buf = ProgressLineBuffer()
    stream = b""
    for chunk in chunks:
        got = buf.feed(chunk)
        before = stream
        stream += chunk
        if b"\n" not in chunk:
            assert got == []
            continue
        # The lines this chunk completed, as a line-by-line reader would see them.
        done = stream[: stream.rfind(b"\n")].split(b"\n")
        prior = before.count(b"\n")
        valid = [
            u
            for line in done[prior:]
            if len(line) <= MAX_LINE_BYTES and (u := parse_progress_line(line)) is not None
        ]
        assert got == valid[-1:]
