"""The one call: ``Sandbox.run(program, limits)`` runs a program in a job's work dir under the
job's limits and returns what it did (docs/sandbox.md, "The process model").

``Program`` says what to execute, with what files, stdin and environment, for how long, and
where its output and progress go; ``limits`` is the project's one limits type
(``executors.limits.JobLimits``). ``Sandbox`` holds what start-up settled about this host
(``host.start_host``). A run writes the program's files, makes the job's cgroup, builds the
launcher and bubblewrap command lines (``argv``), supervises the run (``supervise``), then
kills what is left, measures and removes the cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

from ..limits import JobLimits
from .argv import SANDBOX_HOME, bwrap_argv, launcher_argv, sandbox_env
from .capture import OutputSink, ProgressSink
from .cgroups import CgroupHost, CgroupStats, JobCgroup, job_cgroup_name
from .identity import RunAs
from .reaping import open_pipe
from .result import RunResult
from .seccomp_filter import filter_pipe
from .supervise import RunRequest, run_program
from .workdirs import DiskGauge, JobDir, write_files


@dataclasses.dataclass(frozen=True, slots=True)
class Program:
    """One program to run in a job's work dir."""

    #: The command line inside the sandbox (an absolute interpreter or compiler path first).
    command: Sequence[str]
    #: The job's work dir (``workdirs.new_job_dir``): the program's home and working directory.
    workdir: JobDir
    #: Wall-clock limit, in seconds.
    timeout: float
    #: Names the run's cgroup (sanitised).
    job_id: str = "job"
    #: Written into ``workdir`` before the run (relative paths that do not exist yet).
    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    #: Empty dirs made in ``workdir`` after ``files`` unless they exist.
    dirs: tuple[str, ...] = ()
    stdin: bytes = b""
    #: The job's own environment variables (reserved names are dropped, see ``argv``).
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Set: the run is killed and reported ``canceled``.
    cancel: asyncio.Event | None = None
    #: Live output, ``(stream, text)``; None: kept in the result only.
    on_output: OutputSink | None = None
    on_progress: ProgressSink | None = None
    #: The work dir's quota check, shared by the runs of one job; None: one for this run.
    gauge: DiskGauge | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Sandbox:
    """How this host runs a program, settled once at start (``host.start_host``)."""

    #: bubblewrap's path; None: the unsafe mode (no namespaces: a uid drop and rlimits only).
    bwrap: str | None
    #: Who programs run as (None when the server is not root).
    run_as: RunAs | None
    #: util-linux ``setpriv``, which drops the uid after a ``vfork``; None: the spawn does.
    setpriv: str | None = None
    #: bwrap arguments rebuilding the host's system trees (``argv.system_mounts``).
    system: tuple[str, ...] = ()
    #: Dirs covered with an empty tmpfs (``argv.masked_dirs``).
    masks: tuple[str, ...] = ()
    cgroups: CgroupHost | None = None
    #: The compiled seccomp filter (``seccomp_filter.compile_filter``), if any.
    seccomp: bytes | None = None
    allow_network: bool = False

    async def run(self, program: Program, limits: JobLimits) -> RunResult:
        """Run ``program`` to its end, its timeout, a limit or its cancellation; always leaves
        no process of it behind. Raises ``workdirs.DiskFull`` if its files do not fit, and
        ``cgroups.CgroupError`` if its cgroup cannot be made or joined."""
        gauge = program.gauge or DiskGauge(program.workdir)
        write_files(program.workdir.path, program.files, program.dirs, self.run_as)
        cgroup = await self._make_cgroup(program.job_id, limits) if self.cgroups else None
        try:
            request = self._request(program, limits, cgroup, gauge)
            run = await run_program(
                request,
                program.cancel or asyncio.Event(),
                program.on_output or _discard_output,
                program.on_progress or _discard_progress,
            )
            if cgroup is not None:
                # One trip to a thread: kill what is left, read the figures, remove the cgroup.
                stats = await asyncio.to_thread(_kill_measure_remove, cgroup)
                cgroup = None
                run = dataclasses.replace(run, stats=stats)
        finally:
            if cgroup is not None:
                await asyncio.to_thread(_kill_and_remove, cgroup)
        return run

    async def _make_cgroup(self, job_id: str, limits: JobLimits) -> JobCgroup:
        assert self.cgroups is not None
        creating = asyncio.ensure_future(
            asyncio.to_thread(
                JobCgroup.create,
                self.cgroups,
                job_cgroup_name(job_id),
                memory_bytes=limits.memory_mb << 20,
                max_pids=limits.max_processes,
            )
        )
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            # The thread goes on creating it: wait for it, then remove it (no leak).
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_kill_and_remove, await creating)
            raise

    def _request(
        self, program: Program, limits: JobLimits, cgroup: JobCgroup | None, gauge: DiskGauge
    ) -> RunRequest:
        """The launch of ``program``: its pipes (progress, bwrap status, seccomp filter) are
        open on return and owned by the request; closed here if building it fails."""
        cpu_seconds = limits.cpu_seconds(program.timeout)
        pipe = open_pipe()
        status = open_pipe() if self.bwrap else None
        seccomp_fd = filter_pipe(self.seccomp) if self.seccomp and self.bwrap else None
        try:
            prefix = launcher_argv(
                cpu_seconds=cpu_seconds,
                file_size_bytes=limits.max_file_size_mb << 20,
                gate=cgroup is not None,
                setpriv=self.setpriv,
                run_as=self.run_as,
            )
            job_dir = str(program.workdir.path)
            if self.bwrap:
                argv = bwrap_argv(
                    self.bwrap,
                    job_dir=job_dir,
                    system=self.system,
                    masks=self.masks,
                    env=sandbox_env(SANDBOX_HOME, program.env, pipe[1]),
                    command=program.command,
                    status_fd=status[1] if status else None,
                    share_net=self.allow_network,
                    seccomp_fd=seccomp_fd,
                )
                launch_env, cwd = {"PATH": "/usr/bin:/bin"}, "/"
            else:
                argv = list(program.command)
                launch_env, cwd = sandbox_env(job_dir, program.env, pipe[1]), job_dir
            return RunRequest(
                argv=prefix + argv,
                env=launch_env,
                cwd=cwd,
                stdin=program.stdin,
                timeout=program.timeout,
                max_output_bytes=limits.max_output_bytes,
                run_as=None if self.setpriv else self.run_as,
                sandboxed=self.bwrap is not None,
                progress_pipe=pipe,
                status_pipe=status,
                inherit_fds=(seccomp_fd,) if seccomp_fd is not None else (),
                attach=cgroup.attach if cgroup else None,
                kill_rest=cgroup.kill if cgroup else None,
                watch=_watch(cgroup, cpu_seconds, gauge),
            )
        except BaseException:
            for fd in (*pipe, *(status or ()), *((seccomp_fd,) if seccomp_fd is not None else ())):
                os.close(fd)
            raise


def _discard_output(stream: str, text: str) -> None:
    pass


def _discard_progress(update: object) -> None:
    pass


def _watch(
    cgroup: JobCgroup | None, cpu_seconds: int, gauge: DiskGauge
) -> Callable[[], str | None]:
    """The run's periodic check: total CPU of the whole job (all processes) over its limit,
    then its work dir at its disk quota."""

    def check() -> str | None:
        if cgroup is not None:
            used = cgroup.cpu_time_ms()
            if used is not None and used >= cpu_seconds * 1000:
                return "cpu_limit"
        return gauge.check()

    return check


def _kill_and_remove(cgroup: JobCgroup) -> None:
    cgroup.kill()
    cgroup.remove()


def _kill_measure_remove(cgroup: JobCgroup) -> CgroupStats:
    """After the program ended: kill any process it left, then read the job's figures, then
    remove its cgroup (the figures go with it)."""
    cgroup.kill()
    try:
        return cgroup.stats()
    finally:
        cgroup.remove()
