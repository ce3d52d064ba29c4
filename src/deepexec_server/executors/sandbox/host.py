"""Start-up: what this host offers the sandbox, settled once (blocking: run it off the loop).

``start_host`` becomes a child subreaper, sets up the cgroups, the seccomp filter and the work
root, sweeps what a crashed server left, probes each mechanism (``probe``) and decides whether
code jobs can run, and how (docs/sandbox.md, "The layers").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from ...settings import Settings
from .argv import masked_dirs, system_mounts
from .cgroups import CgroupHost
from .identity import RunAs, resolve_run_as
from .probe import ProbeLine, find_bwrap, find_setpriv, probe_host, sandbox_problem
from .reaping import become_subreaper
from .run import Sandbox
from .seccomp_filter import SeccompUnavailable, compile_filter
from .workdirs import (
    WorkDirError,
    default_work_root,
    ensure_work_root,
    mount_check,
    sweep_stale_job_dirs,
)

log = logging.getLogger("deepexec_server.sandbox")


@dataclasses.dataclass(frozen=True, slots=True)
class Host:
    """What start-up found: the sandbox programs run in, or why code jobs are refused."""

    sandbox: Sandbox
    #: Why code jobs cannot run here (they fail with it), or None.
    problem: str | None
    work_root: Path | None
    #: Job dirs are tmpfs mounts (the quota enforced by the kernel), else plain dirs.
    mount_job_dirs: bool
    probe: tuple[ProbeLine, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The ``sandbox`` part of the executor's ``describe()``."""
        sandbox = self.sandbox
        mode = "unavailable" if self.problem else ("bubblewrap" if sandbox.bwrap else "unsafe")
        return {
            "mode": mode,
            "problem": self.problem,
            "run_as": sandbox.run_as.name if sandbox.run_as else None,
            "cgroups": sandbox.cgroups is not None,
            "seccomp": sandbox.seccomp is not None and sandbox.bwrap is not None,
            # tmpfs: the kernel holds each job to its disk_mb; walk: measured every 0.5 s.
            "disk_quota": "tmpfs" if self.mount_job_dirs else "walk",
            "probe": [line.to_dict() for line in self.probe],
        }


#: Before ``start_host``: every code job is refused.
NOT_STARTED = Host(Sandbox(bwrap=None, run_as=None), "executor not started", None, False)


@dataclasses.dataclass(frozen=True, slots=True)
class _Layers:
    cgroups: CgroupHost | None
    cgroup_detail: str
    seccomp: bytes | None
    seccomp_detail: str
    work_root: Path | None
    work_problem: str | None
    disk: tuple[bool, str]


def _set_up_layers(settings: Settings) -> _Layers:
    """Cgroups (stale ones swept), the seccomp filter, the work root (stale dirs swept) and
    whether job dirs can be tmpfs mounts."""
    cgroups, cg_detail = CgroupHost.detect() if os.geteuid() == 0 else (
        None, f"server is not root (uid {os.geteuid()})"
    )  # fmt: skip
    if cgroups is not None:
        for stale in cgroups.sweep():
            log.info("removed stale job cgroup %s", stale)
    seccomp: bytes | None
    try:
        seccomp = compile_filter(settings.allow_network)
        sc_detail = f"{len(seccomp) // 8} BPF instructions"
    except SeccompUnavailable as exc:
        seccomp, sc_detail = None, str(exc)
    work_root: Path | None = None
    work_problem: str | None = None
    disk: tuple[bool, str] = (False, "no usable work dir")
    try:
        root = Path(settings.work_dir) if settings.work_dir else default_work_root()
        work_root = ensure_work_root(root)
        # Logs and goes on past whatever a crashed server's job left: never stops the start.
        for stale in sweep_stale_job_dirs(work_root):
            log.info("removed stale work dir %s", stale)
        disk = mount_check(work_root)
    except (OSError, WorkDirError) as exc:
        work_problem = f"work dir unusable: {exc}"
    return _Layers(cgroups, cg_detail, seccomp, sc_detail, work_root, work_problem, disk)


def start_host(settings: Settings) -> Host:
    """Set up and probe the sandbox's layers; never raises for a host that cannot sandbox:
    the returned ``Host.problem`` says why, and code jobs fail with it."""
    # Before the probe, so that even its test sandbox's init is adopted and reaped.
    subreaper = become_subreaper()
    layers = _set_up_layers(settings)
    probe = probe_host(
        settings, cgroups=(layers.cgroups is not None, layers.cgroup_detail),
        seccomp=(layers.seccomp is not None, layers.seccomp_detail), disk=layers.disk,
    )  # fmt: skip
    for line in probe:
        (log.info if line.ok else log.warning)("%s", line.render())
    if not subreaper:
        log.warning(
            "could not become a child subreaper: finished sandboxes may linger as "
            "zombies until the host's init reaps them"
        )
    bwrap = find_bwrap()
    problem = sandbox_problem(probe)
    run_as: RunAs | None = None
    try:
        run_as = resolve_run_as(settings.sandbox_user)
    except LookupError as exc:
        problem = problem or str(exc)
    problem = problem or layers.work_problem
    # Even unsafe mode never runs a job as root.
    can_drop = run_as is not None or os.geteuid() != 0
    if problem and settings.unsafe_no_sandbox and layers.work_root is not None and can_drop:
        log.warning(
            "!!! UNSAFE: --unsafe-no-sandbox is set and the sandbox is unavailable (%s): code "
            "jobs run WITHOUT namespaces (no network/filesystem isolation; only a uid drop, "
            "rlimits and a process-group kill). Never expose this server to untrusted users.",
            problem,
        )
        problem, bwrap = None, None
    if problem:
        log.error("code jobs will be refused: %s", unavailable_message(problem))
    cred_dir = Path(settings.credentials_file).parent
    masks = masked_dirs([settings.data_dir, cred_dir, layers.work_root or "/"])
    sandbox = Sandbox(
        bwrap=bwrap, run_as=run_as, setpriv=find_setpriv(), system=tuple(system_mounts()),
        masks=tuple(masks), cgroups=layers.cgroups, seccomp=layers.seccomp,
        allow_network=settings.allow_network,
    )  # fmt: skip
    return Host(sandbox, problem, layers.work_root, layers.disk[0], tuple(probe))


def unavailable_message(reason: str) -> str:
    """The error a code job gets when the host cannot sandbox it."""
    return (
        f"sandbox unavailable: {reason}; install bubblewrap (scripts/setup-sandbox.sh) "
        "or start with --unsafe-no-sandbox"
    )
