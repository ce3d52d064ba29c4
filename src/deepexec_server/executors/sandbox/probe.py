"""What this host offers the code sandbox, one line per mechanism.

``probe_host`` is run once at start (it spawns processes: call it off the event loop). Each
line says ``OK <mechanism>: ...`` or ``MISSING <mechanism>: <why>: falls back to <what>``.
The executor decides from the ``namespaces`` line whether code jobs can run at all.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from ...settings import Settings
from ..languages import find_executable
from .argv import LAUNCHER_SHELL, system_mounts
from .identity import RunAs, resolve_run_as
from .reaping import open_pipe, parse_child_pid, read_available, reap_sandbox_init_blocking

#: Mechanism names, in the order the lines are produced.
BUBBLEWRAP = "bubblewrap"
IDENTITY = "uid_switch"
NAMESPACES = "namespaces"
RLIMITS = "rlimits"
CGROUPS = "cgroups"
SECCOMP = "seccomp"
DISK_QUOTA = "disk_quota"

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeLine:
    """One mechanism's verdict on this host."""

    mechanism: str
    ok: bool
    detail: str
    #: Set when this missing mechanism means code jobs cannot be sandboxed: the reason.
    fatal: str | None = None

    def render(self) -> str:
        """The log line: ``OK bubblewrap: bubblewrap 0.8.0``."""
        return f"{'OK' if self.ok else 'MISSING'} {self.mechanism}: {self.detail}"

    def to_dict(self) -> dict[str, str | bool]:
        """For ``describe()``."""
        return {"mechanism": self.mechanism, "ok": self.ok, "detail": self.detail}


def _refused(mechanism: str, reason: str, hint: str) -> ProbeLine:
    return ProbeLine(mechanism, False, f"{reason}: code jobs are refused ({hint})", fatal=reason)


def find_bwrap() -> str | None:
    """Absolute path of bubblewrap, system locations first."""
    for candidate in ("/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("bwrap")


def find_setpriv() -> str | None:
    """Absolute path of util-linux ``setpriv`` (drops to the sandbox uid after a ``vfork``)."""
    return find_executable(("setpriv",), ("/usr/bin", "/bin"))


def namespace_test_argv(bwrap: str, status_fd: int) -> list[str]:
    """The smallest sandbox with the same namespaces as a job: must exit 0."""
    return [
        bwrap, "--json-status-fd", str(status_fd), "--unshare-all", "--unshare-user",
        "--disable-userns", "--die-with-parent",
        "--new-session", *system_mounts(), "--dev", "/dev", "--proc", "/proc",
        "--", "/bin/true",
    ]  # fmt: skip


def _run(
    argv: list[str], run_as: RunAs | None, pass_fds: tuple[int, ...] = ()
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, object] = {"pass_fds": pass_fds}
    if run_as is not None:
        kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=[])
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv,
        capture_output=True,
        text=True,
        timeout=15,
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        check=False,
        **kwargs,
    )


def _probe_bwrap(bwrap: str | None) -> ProbeLine:
    if bwrap is None:
        return _refused(
            BUBBLEWRAP,
            "bwrap not found",
            "install it with scripts/setup-sandbox.sh or start with --unsafe-no-sandbox",
        )
    try:
        version = subprocess.run(
            [bwrap, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        version = f"version unknown ({exc})"
    return ProbeLine(BUBBLEWRAP, True, f"{version or 'bwrap'} at {bwrap}")


def _probe_identity(settings: Settings) -> tuple[ProbeLine, RunAs | None, bool]:
    """(line, run_as, usable). Root without an unprivileged user is not usable."""
    try:
        run_as = resolve_run_as(settings.sandbox_user)
    except LookupError as exc:
        line = _refused(
            IDENTITY, f"root, and {exc}", "run scripts/setup-sandbox.sh to create the sandbox user"
        )
        return line, None, False
    if run_as is None:
        return (
            ProbeLine(
                IDENTITY,
                False,
                f"server is not root (uid {os.geteuid()}): falls back "
                "to running jobs as the server's own uid inside a user namespace",
            ),
            None,
            True,
        )
    note = (
        ""
        if run_as.name == settings.sandbox_user
        else (f" (user {settings.sandbox_user!r} missing; create it with scripts/setup-sandbox.sh)")
    )
    setpriv = find_setpriv()
    how = (
        f"dropped by {setpriv}"
        if setpriv
        else "dropped in a forked child (setpriv from util-linux not found: a slower spawn)"
    )
    return (
        ProbeLine(
            IDENTITY,
            True,
            f"root: jobs run as {run_as.name} (uid {run_as.uid}, gid {run_as.gid}), {how}{note}",
        ),
        run_as,
        True,
    )


def _probe_namespaces(bwrap: str | None, run_as: RunAs | None, usable: bool) -> ProbeLine:
    if bwrap is None or not usable:
        return ProbeLine(NAMESPACES, False, "not tested (no bwrap or no sandbox user)")
    hint = "enable user namespaces, or start with --unsafe-no-sandbox"
    status_r, status_w = open_pipe()
    try:
        proc = _run(namespace_test_argv(bwrap, status_w), run_as, (status_w,))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _refused(NAMESPACES, f"bwrap could not run: {exc}", hint)
    finally:
        os.close(status_w)
        init_pid = parse_child_pid(read_available(status_r))
        os.close(status_r)
        if init_pid is not None:
            # Only reapable when the caller made this process a subreaper.
            reap_sandbox_init_blocking(init_pid, within=0.2)
    if proc.returncode != 0:
        reason = (proc.stderr.strip() or f"exit status {proc.returncode}").splitlines()[0]
        return _refused(NAMESPACES, reason, hint)
    who = f"uid {run_as.uid}" if run_as else "the server's uid"
    return ProbeLine(NAMESPACES, True, f"user, pid, net, mount, ipc, uts namespaces work as {who}")


def _probe_rlimits() -> ProbeLine:
    if not os.access(LAUNCHER_SHELL, os.X_OK):
        return ProbeLine(
            RLIMITS,
            False,
            f"{LAUNCHER_SHELL} not found: falls back to the wall clock only (no per-process "
            "CPU, file size or open-file limits)",
        )
    return ProbeLine(
        RLIMITS, True, f"RLIMIT_CPU, FSIZE, NOFILE, CORE set by the launcher ({LAUNCHER_SHELL})"
    )


def cgroup_summary(root: Path = CGROUP_ROOT) -> str:
    """Which cgroup controllers the host has (v2 controllers, or mounted v1 hierarchies)."""
    v2 = root / "cgroup.controllers"
    if v2.exists():
        return f"cgroup v2 controllers: {v2.read_text().split()}"
    v1 = [c for c in ("memory", "pids", "cpu", "cpuacct") if (root / c / "tasks").exists()]
    unified = root / "unified" / "cgroup.controllers"
    extra = ""
    if unified.exists():
        extra = f"; v2 at {unified.parent} with {unified.read_text().split()}"
    return f"cgroup v1 controllers: {v1}{extra}" if v1 else "no cgroup controllers found"


def _probe_cgroups(result: tuple[bool, str] | None) -> ProbeLine:
    if result is None:
        from .cgroups import CgroupHost

        host, detail = CgroupHost.detect() if os.geteuid() == 0 else (None, "server is not root")
        result = (host is not None, detail)
    ok, detail = result
    if ok:
        return ProbeLine(CGROUPS, True, detail)
    return ProbeLine(
        CGROUPS,
        False,
        f"{detail} ({cgroup_summary()}): falls back to rlimits (per process) and the wall "
        "clock; no total memory, process-count or whole-job CPU limit",
    )


def _probe_seccomp(result: tuple[bool, str] | None) -> ProbeLine:
    if result is None:
        from .seccomp_filter import SeccompUnavailable, compile_filter

        try:
            result = (True, f"{len(compile_filter(False)) // 8} BPF instructions")
        except SeccompUnavailable as exc:
            result = (False, str(exc))
    ok, detail = result
    if ok:
        return ProbeLine(
            SECCOMP,
            True,
            f"libseccomp filter ({detail}) via bwrap --seccomp: ptrace, mount, unshare, setns, "
            "bpf, keyctl, module and kexec calls, ... and AF_INET/INET6/NETLINK/PACKET sockets "
            "(unless networking is allowed) fail with EPERM",
        )
    return ProbeLine(
        SECCOMP,
        False,
        f"{detail}: falls back to the empty network namespace and --disable-userns "
        "(install libseccomp2 and pyseccomp: scripts/setup-sandbox.sh)",
    )


def _probe_disk(settings: Settings, result: tuple[bool, str] | None) -> ProbeLine:
    if result is None:
        from .workdirs import WorkDirError, default_work_root, ensure_work_root, mount_check

        root = Path(settings.work_dir) if settings.work_dir else default_work_root()
        try:
            result = mount_check(ensure_work_root(root))
        except (OSError, WorkDirError) as exc:
            result = (False, f"work dir {root} unusable ({exc})")
    ok, detail = result
    if ok:
        return ProbeLine(
            DISK_QUOTA,
            True,
            f"{detail}: a job's files past its disk_mb fail with ENOSPC and end it disk_limit",
        )
    return ProbeLine(
        DISK_QUOTA,
        False,
        f"cannot mount a tmpfs per job dir: {detail}: falls back to measuring each job dir "
        "every 0.5 s and killing the job over its disk_mb (a burst between two checks can "
        "exceed it; RLIMIT_FSIZE still caps each file)",
    )


def probe_host(
    settings: Settings,
    cgroups: tuple[bool, str] | None = None,
    seccomp: tuple[bool, str] | None = None,
    disk: tuple[bool, str] | None = None,
) -> list[ProbeLine]:
    """Probe each sandbox mechanism (spawns bwrap once; blocking). ``cgroups``/``seccomp``:
    (usable, detail) when the caller already set them up; probed here otherwise. ``disk``:
    whether job dirs get a tmpfs (``workdirs.mount_check``)."""
    bwrap = find_bwrap()
    identity, run_as, usable = _probe_identity(settings)
    return [
        _probe_bwrap(bwrap),
        identity,
        _probe_namespaces(bwrap, run_as, usable),
        _probe_rlimits(),
        _probe_cgroups(cgroups),
        _probe_seccomp(seccomp),
        _probe_disk(settings, disk),
    ]


def sandbox_problem(lines: list[ProbeLine]) -> str | None:
    """Why code jobs cannot be sandboxed on this host, or None if they can."""
    return next((line.fatal for line in lines if line.fatal), None)
