"""The ``code_execution`` executor: validate a program, run it sandboxed, report the outcome.

Job data::

    {"code": "print(1)", "language": "python", "stdin": "", "args": [], "env": {}}

Languages: python (py, python3), javascript (js, node, nodejs), bash (sh, shell), and the compiled
c, cpp, java, rust and go where their toolchain is installed (see ``languages``). The
program runs in bubblewrap as an unprivileged uid (see ``sandbox``); its stdout/stderr stream
to the job's events and the first ``Settings.max_output_bytes`` of each are kept in the
result. A program reports progress by writing ``PERCENT [message]`` lines to the file
descriptor in ``$DEEPEXEC_PROGRESS_FD`` (see ``_progress_helper`` for one-liners).

``data.limits`` (all optional; defaults and maxima are ``Settings.code_limits_default`` and
``code_limits_max``, over a maximum is a 422):
``cpu_time_s`` (total CPU of every process), ``memory_mb`` (cgroup memory+swap),
``max_processes`` (cgroup pids.max, threads included), ``max_output_bytes`` (per stream),
``max_file_size_mb`` (RLIMIT_FSIZE), ``disk_mb`` (the job dir's size: see ``workdirs``).
Exceeding them ends the job FAILED with ``memory_limit``, ``cpu_limit``, ``output_limit`` or
``disk_limit`` (the first ``max_output_bytes`` of each stream kept, ``*_truncated`` set, the
program killed). docs/sandbox.md lists every bound.

``data.files``: ``{"rel/path": "text" | {"content": base64, "encoding": "base64"}}`` written
into the work dir before the run. Files the program leaves under ``outputs/`` come back in
``result.files`` (text, or ``{"content", "encoding": "base64"}`` when not UTF-8), at most
``MAX_RESULT_FILES_BYTES`` in all (``files_truncated`` otherwise); names that are not UTF-8
and directories deeper than ``MAX_OUTPUT_DEPTH`` are listed in ``result.files_skipped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..domain import ErrorType, JobError
from ..settings import Settings
from . import languages as langs
from ._progress_helper import ProgressUpdate
from .base import ExecutionContext, Outcome
from .cgroups import CgroupError, CgroupHost, CgroupLimits, CgroupStats, JobCgroup, job_cgroup_name
from .code_data import (
    MAX_INPUT_FILES,
    encode_files,
    validate_code_data,
    validate_files,
    validate_limits,
)
from .limits import COMPILE_LIMITS, JobLimits, LimitPolicy
from .probe import ProbeLine, find_setpriv, probe_host, sandbox_problem
from .sandbox import (
    SANDBOX_HOME,
    Limits,
    RunAs,
    RunRequest,
    RunResult,
    become_subreaper,
    bwrap_argv,
    launcher_argv,
    masked_dirs,
    open_pipe,
    resolve_run_as,
    run_program,
    sandbox_env,
    system_mounts,
)
from .seccomp_filter import SeccompUnavailable, compile_filter, filter_pipe
from .workdirs import (
    DiskGauge,
    JobDir,
    WorkDirError,
    default_work_root,
    ensure_work_root,
    mount_check,
    new_job_dir,
    remove_job_dir,
    sweep_stale_job_dirs,
    write_job_file,
)

log = logging.getLogger("deepexec_server.sandbox")

#: Output files returned in the result (total decoded bytes).
MAX_RESULT_FILES_BYTES = 1024 * 1024
OUTPUTS_DIR = "outputs"
#: How far the collection of output files looks: directory levels, entries, and how many
#: left-out names the result lists.
MAX_OUTPUT_DEPTH = 32
MAX_OUTPUT_ENTRIES = 10_000
MAX_SKIPPED_REPORTED = 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: The compile step of compiled languages: its own wall clock and limits (javac's JVM needs
#: room; gcc's cc1 forks as and ld).
COMPILE_TIMEOUT_S = 60.0


# --- outcome (pure) ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Collected:
    """What the executor gathered besides the run itself: cgroup accounting, output files."""

    stats: CgroupStats | None = None
    files: dict[str, Any] | None = None
    files_truncated: bool = False
    limits: JobLimits | None = None
    #: Compiled languages: what the compiler printed (None for interpreted languages).
    compile_output: str | None = None
    #: Output files left out for their name or depth (``OutputFiles.skipped``).
    files_skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    #: Why the job dir was over its disk quota when the run ended, or None.
    disk_full: str | None = None


def result_dict(run: RunResult, language: str, extra: Collected | None = None) -> dict[str, Any]:
    """The job's ``result``: what the program did, whatever the verdict. With ``extra``
    (the real executor), also ``cpu_time_ms``, ``memory_peak_kb``, ``oom_killed`` (None where
    this host has no cgroups), ``files``, ``files_truncated`` and ``files_skipped``."""
    base: dict[str, Any] = {
        "stdout": run.stdout,
        "stderr": run.stderr,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "timed_out": run.timed_out,
        "stdout_truncated": run.stdout_truncated,
        "stderr_truncated": run.stderr_truncated,
        "wall_time_ms": run.wall_time_ms,
        "language": language,
    }
    if extra is None:
        return base
    stats = extra.stats
    base.update(
        cpu_time_ms=stats.cpu_time_ms if stats else None,
        memory_peak_kb=stats.memory_peak_kb if stats else None,
        oom_killed=stats.oom_killed if stats else None,
        files=extra.files or {},
        files_truncated=extra.files_truncated,
        files_skipped=extra.files_skipped,
        compile_output=extra.compile_output,
    )
    return base


def _format_seconds(timeout: float) -> str:
    return f"{timeout:g}"


def decide_outcome(
    run: RunResult, language: str, timeout: float, extra: Collected | None = None
) -> Outcome:
    """Map a run to the job's outcome: cancel > memory (OOM kill) > CPU > disk > output >
    timeout > sandbox failure > exit status."""
    result = result_dict(run, language, extra)
    limits = extra.limits if extra else None
    if run.canceled:
        return Outcome(result, canceled=True)
    if extra is not None and extra.stats is not None and extra.stats.oom_killed:
        mb = f" of {limits.memory_mb} MB" if limits else ""
        return Outcome(result, JobError(ErrorType.MEMORY_LIMIT, f"exceeded the memory limit{mb}"))
    if run.limit_exceeded == "cpu_limit":
        secs = f" of {limits.cpu_time_s} s" if limits and limits.cpu_time_s else ""
        return Outcome(result, JobError(ErrorType.CPU_LIMIT, f"exceeded the CPU time limit{secs}"))
    if run.limit_exceeded == "disk_limit" or (extra is not None and extra.disk_full):
        why = extra.disk_full if extra is not None and extra.disk_full else None
        quota = f"filled its disk quota of {limits.disk_mb} MB" if limits else "filled its disk"
        return Outcome(result, JobError(ErrorType.DISK_LIMIT, why or quota))
    if run.limit_exceeded == "output_limit" or run.stdout_truncated or run.stderr_truncated:
        size = f" of {limits.max_output_bytes} bytes" if limits else ""
        return Outcome(result, JobError(ErrorType.OUTPUT_LIMIT, f"output exceeded the limit{size}"))
    if run.timed_out:
        return Outcome(
            result,
            JobError(ErrorType.TIMEOUT, f"exceeded the {_format_seconds(timeout)} s time limit"),
        )
    if run.sandbox_failed:
        reason = run.stderr.strip().splitlines()[0] if run.stderr.strip() else "bwrap failed"
        return Outcome(result, JobError(ErrorType.INTERNAL, f"sandbox failed to start: {reason}"))
    if run.signal == "SIGXCPU":
        return Outcome(result, JobError(ErrorType.CPU_LIMIT, "exceeded the CPU time limit"))
    if run.signal is not None:
        return Outcome(result, JobError(ErrorType.RUNTIME_ERROR, f"killed by {run.signal}"))
    if run.exit_code:
        return Outcome(
            result, JobError(ErrorType.RUNTIME_ERROR, f"exited with code {run.exit_code}")
        )
    return Outcome(result)


def compile_failure(build: RunResult, stats: CgroupStats | None, timeout: float) -> str | None:
    """Why the compile step failed (the ``compile_error`` message), or None if it built."""
    if build.canceled:
        return "canceled while compiling"
    if build.timed_out:
        return f"compilation exceeded {_format_seconds(timeout)} s"
    if stats is not None and stats.oom_killed:
        return f"compilation exceeded {COMPILE_LIMITS.memory_mb} MB of memory"
    if build.sandbox_failed:
        return "sandbox failed to start the compiler"
    if build.limit_exceeded is not None:
        return f"compilation stopped: {build.limit_exceeded}"
    if build.signal is not None:
        return f"compiler killed by {build.signal}"
    if build.exit_code:
        return f"compilation failed (exit code {build.exit_code})"
    return None


def unavailable_message(reason: str) -> str:
    """The error a code job gets when the host cannot sandbox it."""
    return (
        f"sandbox unavailable: {reason}; install bubblewrap (scripts/setup-sandbox.sh) "
        "or start with --unsafe-no-sandbox"
    )


# --- files (thin) -----------------------------------------------------------------------------


def write_input_files(job_dir: Path, files: Mapping[str, bytes], owner: RunAs | None) -> None:
    """Write the job's input files (validated relative paths) into its fresh work dir."""
    for name, content in files.items():
        parent = job_dir
        for part in name.split("/")[:-1]:
            parent = parent / part
            if not parent.exists():
                parent.mkdir(mode=0o700)
                if owner is not None:
                    os.chown(parent, owner.uid, owner.gid)
        path = job_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        if owner is not None:
            os.chown(path, owner.uid, owner.gid)


@dataclasses.dataclass(frozen=True, slots=True)
class OutputFiles:
    """What came back from ``outputs/``."""

    files: dict[str, bytes]
    #: A budget (bytes, files, entries looked at) was reached: some files were not returned.
    truncated: bool
    #: The first ``MAX_SKIPPED_REPORTED`` files or directories left out for their name or
    #: depth: ``{"path": ..., "reason": ...}``, names shown with undecodable bytes escaped.
    skipped: list[dict[str, str]]


def _shown(rel: bytes) -> str:
    """A job-made path as text for the result: never a lone surrogate (which neither the
    stores nor JSON encoders accept), at most 200 characters."""
    text = rel.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= 200 else text[:200] + "..."


def collect_output_files(
    outputs: Path, owner_uid: int | None, budget: int = MAX_RESULT_FILES_BYTES
) -> OutputFiles:
    """Regular files under ``outputs`` (names relative to it), at most ``budget`` bytes in all
    and ``MAX_INPUT_FILES`` files. Runs after every process of the job is dead; symlinks,
    devices, fifos and files of another owner are left out, never followed. The walk is
    iterative and by directory fd (a job's tree may be deeper than PATH_MAX allows), at most
    ``MAX_OUTPUT_DEPTH`` levels and ``MAX_OUTPUT_ENTRIES`` entries; a name that is not UTF-8
    is reported in ``skipped``."""
    found: dict[str, bytes] = {}
    skipped: list[dict[str, str]] = []
    truncated = False
    seen = 0

    def skip(rel: bytes, reason: str) -> None:
        if len(skipped) < MAX_SKIPPED_REPORTED:
            skipped.append({"path": _shown(rel), "reason": reason})

    try:
        root = os.open(outputs, _DIR_FLAGS)
    except OSError:
        return OutputFiles(found, truncated, skipped)
    # (dir fd, its path relative to outputs, its subdirectories still to visit)
    stack: list[tuple[int, bytes, list[str]]] = []
    fd, prefix = root, b""
    try:
        while True:
            subdirs: list[str] = []
            try:
                with os.scandir(fd) as it:
                    # Never more than the entries still allowed, however large the dir.
                    room = MAX_OUTPUT_ENTRIES - seen + 1
                    entries = sorted(itertools.islice(it, room), key=lambda e: e.name)
            except OSError:
                entries = []
            for entry in entries:
                seen += 1
                if seen > MAX_OUTPUT_ENTRIES:
                    truncated = True
                    break
                rel = prefix + os.fsencode(entry.name)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if not is_dir and not stat.S_ISREG(st.st_mode):
                    continue
                if owner_uid is not None and st.st_uid != owner_uid:
                    continue
                try:
                    rel.decode("utf-8")
                except UnicodeDecodeError:
                    kind = "directory name" if is_dir else "file name"
                    skip(rel + (b"/" if is_dir else b""), f"{kind} is not valid UTF-8")
                    continue
                if is_dir:
                    if len(stack) + 1 > MAX_OUTPUT_DEPTH:
                        skip(rel + b"/", f"deeper than {MAX_OUTPUT_DEPTH} directory levels")
                    else:
                        subdirs.append(entry.name)
                    continue
                if st.st_size > budget or len(found) >= MAX_INPUT_FILES:
                    truncated = True
                    continue
                try:
                    file_fd = os.open(
                        entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd
                    )
                except OSError:
                    continue
                try:
                    with os.fdopen(file_fd, "rb") as f:
                        content = f.read(budget + 1)
                except OSError:
                    continue
                if len(content) > budget:
                    truncated = True
                    continue
                budget -= len(content)
                found[rel.decode("utf-8")] = content
            subdirs.reverse()
            stack.append((fd, prefix, subdirs))
            fd = -1
            while stack and fd < 0:
                parent_fd, parent_prefix, todo = stack[-1]
                if not todo or seen > MAX_OUTPUT_ENTRIES:
                    os.close(parent_fd)
                    stack.pop()
                    continue
                name = todo.pop()
                with contextlib.suppress(OSError):
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                    prefix = parent_prefix + os.fsencode(name) + b"/"
            if fd < 0:
                break
    finally:
        for parent_fd, _, _ in stack:
            os.close(parent_fd)
        if fd >= 0:
            os.close(fd)
    return OutputFiles(found, truncated, skipped)


# --- the executor -----------------------------------------------------------------------------


class CodeExecutor:
    """Runs ``code_execution`` jobs in a bubblewrap sandbox. See the module docstring."""

    job_type = "code_execution"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._limits = LimitPolicy.from_settings(settings)
        self._probe: list[ProbeLine] = []
        self._interpreters: dict[str, langs.Interpreter] | None = None
        self._problem: str | None = "executor not started"
        self._run_as: RunAs | None = None
        self._setpriv: str | None = None
        self._bwrap: str | None = None
        self._work_root: Path | None = None
        self._masks: list[str] = []
        self._system: list[str] = []
        self._cgroups: CgroupHost | None = None
        self._seccomp: bytes | None = None
        #: Job dirs are tmpfs mounts (the quota enforced by the kernel), else plain dirs.
        self._mount_job_dirs = False

    # -- lifecycle --

    async def start(self) -> None:
        """Probe the host and find interpreters (off the event loop). Never raises for a host
        that cannot sandbox: code jobs then fail with a clear error instead."""
        await asyncio.to_thread(self._start_blocking)

    def _start_blocking(self) -> None:
        from .probe import find_bwrap

        # Before the probe, so that even its test sandbox's init is adopted and reaped.
        subreaper = become_subreaper()
        self._cgroups, cg_detail = CgroupHost.detect() if os.geteuid() == 0 else (
            None, f"server is not root (uid {os.geteuid()})"
        )  # fmt: skip
        if self._cgroups is not None:
            for stale in self._cgroups.sweep():
                log.info("removed stale job cgroup %s", stale)
        try:
            self._seccomp = compile_filter(self.settings.allow_network)
            sc_detail = f"{len(self._seccomp) // 8} BPF instructions"
        except SeccompUnavailable as exc:
            self._seccomp, sc_detail = None, str(exc)
        work_problem: str | None = None
        disk: tuple[bool, str] = (False, "no usable work dir")
        try:
            root = Path(self.settings.work_dir) if self.settings.work_dir else default_work_root()
            self._work_root = ensure_work_root(root)
            # Logs and goes on past whatever a crashed server's job left: never stops the start.
            for stale in sweep_stale_job_dirs(self._work_root):
                log.info("removed stale work dir %s", stale)
            disk = mount_check(self._work_root)
        except (OSError, WorkDirError) as exc:
            work_problem = f"work dir unusable: {exc}"
        self._mount_job_dirs = disk[0]
        self._probe = probe_host(
            self.settings, cgroups=(self._cgroups is not None, cg_detail),
            seccomp=(self._seccomp is not None, sc_detail), disk=disk,
        )  # fmt: skip
        for line in self._probe:
            (log.info if line.ok else log.warning)("%s", line.render())
        self._interpreters = langs.detect_interpreters()
        for interp in self._interpreters.values():
            log.info("language %s %s at %s", interp.language.name, interp.version, interp.path)
        self._bwrap = find_bwrap()
        if not subreaper:
            log.warning(
                "could not become a child subreaper: finished sandboxes may linger as "
                "zombies until the host's init reaps them"
            )
        self._setpriv = find_setpriv()
        problem = sandbox_problem(self._probe)
        try:
            self._run_as = resolve_run_as(self.settings.sandbox_user)
        except LookupError as exc:
            problem = problem or str(exc)
        problem = problem or work_problem
        # Even unsafe mode never runs a job as root.
        can_drop = self._run_as is not None or os.geteuid() != 0
        if problem and self.settings.unsafe_no_sandbox and self._work_root is not None and can_drop:
            log.warning(
                "!!! UNSAFE: --unsafe-no-sandbox is set and the sandbox is unavailable (%s): code "
                "jobs run WITHOUT namespaces (no network/filesystem isolation; only a uid drop, "
                "rlimits and a process-group kill). Never expose this server to untrusted users.",
                problem,
            )
            self._problem = None
            self._bwrap = None
        else:
            self._problem = problem
        if self._problem:
            log.error("code jobs will be refused: %s", unavailable_message(self._problem))
        cred_dir = Path(self.settings.credentials_file).parent
        self._masks = masked_dirs([self.settings.data_dir, cred_dir, self._work_root or "/"])
        self._system = system_mounts()

    async def close(self) -> None:
        """Nothing to release: every run cleans up after itself."""

    # -- submit time --

    def validate(self, data: Mapping[str, Any], timeout: int) -> dict[str, Any]:
        """Check and normalise a code job's data (see ``validate_code_data``)."""
        return validate_code_data(
            data,
            self._interpreters,
            policy=self._limits,
            max_files_bytes=self.settings.max_body_bytes,
        )

    async def admit(self, data: Mapping[str, Any]) -> None:
        """Nothing to ask: ``validate`` checks everything."""

    def describe(self) -> dict[str, Any]:
        """Languages (name, version, absolute path), the job limits' defaults and maxima, and
        the sandbox probe lines."""
        mode = "unavailable" if self._problem else ("bubblewrap" if self._bwrap else "unsafe")
        return {
            "languages": langs.language_table(self._interpreters or {}),
            "limits": {
                "default": self._limits.defaults.to_dict(),
                "max": dict(self._limits.maxima),
            },
            "sandbox": {
                "mode": mode,
                "problem": self._problem,
                "run_as": self._run_as.name if self._run_as else None,
                "cgroups": self._cgroups is not None,
                "seccomp": self._seccomp is not None and self._bwrap is not None,
                # tmpfs: the kernel holds each job to its disk_mb; walk: measured every 0.5 s.
                "disk_quota": "tmpfs" if self._mount_job_dirs else "walk",
                "probe": [line.to_dict() for line in self._probe],
            },
        }

    # -- run time --

    async def execute(self, data: dict[str, Any], ctx: ExecutionContext) -> Outcome:
        """Run the program to its end, its timeout or its cancellation."""
        if self._problem:
            return Outcome(None, JobError(ErrorType.INTERNAL, unavailable_message(self._problem)))
        assert self._work_root is not None
        language = langs.resolve_language(str(data.get("language", "python")))
        interp = (self._interpreters or {}).get(language.name) if language else None
        if language is None or interp is None:
            return Outcome(
                None,
                JobError(ErrorType.INTERNAL, f"language {data.get('language')!r} is not available"),
            )
        limits = validate_limits(data.get("limits"), self._limits)
        files = validate_files(data.get("files"), self.settings.max_body_bytes)
        job = new_job_dir(
            self._work_root, ctx.job_id, self._run_as, limits.disk_mb << 20, self._mount_job_dirs
        )
        job_dir, gauge = job.path, DiskGauge(job)
        started = time.monotonic()
        compile_output: str | None = None
        removing: asyncio.Future[tuple[OutputFiles, str | None]] | None = None
        try:
            try:
                write_job_file(job_dir, language.filename, data["code"], self._run_as)
                write_input_files(job_dir, files, self._run_as)
                outputs = job_dir / OUTPUTS_DIR
                if not outputs.exists():
                    write_input_files(job_dir, {f"{OUTPUTS_DIR}/.keep": b""}, self._run_as)
                    os.unlink(outputs / ".keep")
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                message = f"the program and its input files do not fit in {limits.disk_mb} MB"
                return Outcome(None, JobError(ErrorType.DISK_LIMIT, message))
            if language.compiled:
                compile_timeout = min(COMPILE_TIMEOUT_S, ctx.timeout)
                build, build_stats = await self._run_step(
                    data, language.compile_argv(interp.path), b"", job_dir, compile_timeout,
                    COMPILE_LIMITS, ctx, gauge, stream=False,
                )  # fmt: skip
                compile_output = (build.stdout + build.stderr)[: COMPILE_LIMITS.max_output_bytes]
                failed = compile_failure(build, build_stats, compile_timeout)
                if failed is not None:
                    extra = Collected(build_stats, {}, False, limits, compile_output)
                    result = result_dict(build, language.name, extra)
                    result.update(stdout="", stderr="", exit_code=None, signal=None)
                    if build.canceled:
                        return Outcome(result, canceled=True)
                    return Outcome(result, JobError(ErrorType.COMPILE_ERROR, failed))
            timeout = max(0.1, ctx.timeout - (time.monotonic() - started))
            command = language.argv(interp.path, data.get("args", []), interp.runtime)
            stdin = str(data.get("stdin", "")).encode("utf-8", errors="replace")
            run, stats = await self._run_step(
                data, command, stdin, job_dir, timeout, limits, ctx, gauge, stream=True
            )
            owner_uid = self._run_as.uid if self._run_as else None
            removing = asyncio.ensure_future(
                asyncio.to_thread(_collect_and_remove, job, gauge, outputs, owner_uid)
            )
            out, disk_full = await asyncio.shield(removing)
        except CgroupError as exc:
            return Outcome(None, JobError(ErrorType.INTERNAL, str(exc)))
        finally:
            if removing is None:
                await asyncio.to_thread(remove_job_dir, job)
            elif not removing.done():  # cancelled while the thread works: let it finish
                with contextlib.suppress(Exception):
                    await removing
        extra = Collected(
            stats, encode_files(out.files), out.truncated, limits, compile_output,
            files_skipped=out.skipped, disk_full=disk_full,
        )  # fmt: skip
        return decide_outcome(run, language.name, ctx.timeout, extra)

    async def _run_step(
        self,
        data: Mapping[str, Any],
        command: list[str],
        stdin: bytes,
        job_dir: Path,
        timeout: float,
        limits: JobLimits,
        ctx: ExecutionContext,
        gauge: DiskGauge,
        *,
        stream: bool,
    ) -> tuple[RunResult, CgroupStats | None]:
        """One sandboxed process tree (the compile step or the program) in its own cgroup."""
        cgroup: JobCgroup | None = None
        if self._cgroups is not None:
            cg_limits = CgroupLimits(limits.memory_mb << 20, limits.max_processes)
            creating = asyncio.ensure_future(
                asyncio.to_thread(
                    JobCgroup.create, self._cgroups, job_cgroup_name(ctx.job_id), cg_limits
                )
            )
            try:
                cgroup = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # The thread goes on creating it: wait for it, then remove it (no leak).
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(_kill_and_remove, await creating)
                raise
        try:

            def on_progress(update: ProgressUpdate) -> None:
                ctx.report_progress(update.percent, update.message)

            def no_output(stream: str, text: str) -> None:
                pass

            request = self._build_request(
                data, command, stdin, job_dir, timeout, limits, cgroup, gauge
            )
            sink = ctx.emit_output if stream else no_output
            run = await run_program(request, ctx.cancel_requested, sink, on_progress)
            stats = None
            if cgroup is not None:
                # One trip to a thread: kill what is left, read the figures, remove the cgroup.
                stats = await asyncio.to_thread(_kill_measure_remove, cgroup)
                cgroup = None
        finally:
            if cgroup is not None:
                await asyncio.to_thread(_kill_and_remove, cgroup)
        return run, stats

    def _build_request(
        self,
        data: Mapping[str, Any],
        command: list[str],
        stdin: bytes,
        job_dir: Path,
        timeout: float,
        limits: JobLimits,
        cgroup: JobCgroup | None,
        gauge: DiskGauge,
    ) -> RunRequest:
        pipe = open_pipe()
        status = open_pipe() if self._bwrap else None
        seccomp_fd = filter_pipe(self._seccomp) if self._seccomp and self._bwrap else None
        try:
            rlimits = Limits(
                cpu_seconds=limits.cpu_seconds(timeout),
                file_size_bytes=limits.max_file_size_mb << 20,
            )
            prefix = launcher_argv(
                rlimits, gate=cgroup is not None, setpriv=self._setpriv, run_as=self._run_as
            )
            if self._bwrap:
                env = sandbox_env(SANDBOX_HOME, data.get("env", {}), pipe[1])
                argv = bwrap_argv(
                    self._bwrap,
                    job_dir=str(job_dir),
                    system=self._system,
                    masks=self._masks,
                    env=env,
                    command=command,
                    status_fd=status[1] if status else None,
                    share_net=self.settings.allow_network,
                    seccomp_fd=seccomp_fd,
                )
                launch_env = {"PATH": "/usr/bin:/bin"}
                cwd = "/"
            else:
                argv = command
                launch_env = sandbox_env(str(job_dir), data.get("env", {}), pipe[1])
                cwd = str(job_dir)
            return RunRequest(
                argv=prefix + argv,
                env=launch_env,
                cwd=cwd,
                stdin=stdin,
                timeout=timeout,
                max_output_bytes=limits.max_output_bytes,
                run_as=None if self._setpriv else self._run_as,
                sandboxed=self._bwrap is not None,
                progress_pipe=pipe,
                status_pipe=status,
                inherit_fds=(seccomp_fd,) if seccomp_fd is not None else (),
                attach=cgroup.attach if cgroup else None,
                kill_rest=cgroup.kill if cgroup else None,
                watch=_watch(cgroup, limits.cpu_seconds(timeout), gauge),
            )
        except BaseException:
            for fd in (*pipe, *(status or ()), *((seccomp_fd,) if seccomp_fd is not None else ())):
                os.close(fd)
            raise


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


def _collect_and_remove(
    job: JobDir, gauge: DiskGauge, outputs: Path, owner_uid: int | None
) -> tuple[OutputFiles, str | None]:
    """Whether the job dir ended over its quota, and the files the program left in
    ``outputs``; then the job dir is removed."""
    try:
        return collect_output_files(outputs, owner_uid), gauge.final()
    finally:
        remove_job_dir(job)
