"""The ``code_execution`` executor: validate a program, run it sandboxed, report the outcome.

Job data::

    {"code": "print(1)", "language": "python", "stdin": "", "args": [], "env": {}}

Languages: python (py, python3), javascript (js, node, nodejs), bash (sh, shell), and the compiled
c, cpp, java, rust and go where their toolchain is installed (see ``languages``). The
program runs in bubblewrap as an unprivileged uid (see ``sandbox`` and docs/sandbox.md); its
stdout/stderr stream to the job's events and the first ``Settings.max_output_bytes`` of each
are kept in the result. A program reports progress by writing ``PERCENT [message]`` lines to
the file descriptor in ``$DEEPEXEC_PROGRESS_FD`` (see ``sandbox.progress`` for one-liners).

``data.limits`` (all optional; defaults and maxima are ``Settings.code_limits_default`` and
``code_limits_max``, over a maximum is a 422):
``cpu_time_s`` (total CPU of every process), ``memory_mb`` (cgroup memory+swap),
``max_processes`` (cgroup pids.max, threads included), ``max_output_bytes`` (per stream),
``max_file_size_mb`` (RLIMIT_FSIZE), ``disk_mb`` (the job dir's size: see ``sandbox.workdirs``).
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
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..domain import ErrorType, JobError
from ..settings import Settings
from . import languages as langs
from .base import ExecutionContext, Outcome
from .code_data import (
    MAX_INPUT_FILES,
    encode_files,
    validate_code_data,
    validate_files,
    validate_limits,
)
from .code_files import MAX_RESULT_FILES_BYTES, OUTPUTS_DIR, OutputFiles, collect_output_files
from .limits import COMPILE_LIMITS, JobLimits, LimitPolicy
from .multitest import Case, CaseRun, Judging, compile_error_tests, run_tests
from .sandbox import (
    NOT_STARTED,
    CgroupError,
    CgroupStats,
    DiskFull,
    DiskGauge,
    Host,
    JobDir,
    Program,
    ProgressUpdate,
    RunAs,
    RunResult,
    new_job_dir,
    remove_job_dir,
    start_host,
    unavailable_message,
    write_files,
)
from .sandbox.cgroups import CgroupHost

log = logging.getLogger("deepexec_server.sandbox")

#: What a compile step may add to the job's files (javac writes a class file per class).
MAX_COMPILED_FILES = 1000

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


# --- the executor -----------------------------------------------------------------------------


class CodeExecutor:
    """Runs ``code_execution`` jobs in a bubblewrap sandbox. See the module docstring."""

    job_type = "code_execution"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._limits = LimitPolicy.from_settings(settings)
        self._host: Host = NOT_STARTED
        self._interpreters: dict[str, langs.Interpreter] | None = None

    @property
    def work_root(self) -> Path | None:
        """Where job work dirs are made (None until started, or if unusable)."""
        return self._host.work_root

    @property
    def cgroups(self) -> CgroupHost | None:
        """Where job cgroups are made (None without cgroups)."""
        return self._host.sandbox.cgroups

    # -- lifecycle --

    async def start(self) -> None:
        """Probe the host and find interpreters (off the event loop). Never raises for a host
        that cannot sandbox: code jobs then fail with a clear error instead."""
        await asyncio.to_thread(self._start_blocking)

    def _start_blocking(self) -> None:
        host = start_host(self.settings)
        self._interpreters = langs.detect_interpreters()
        for interp in self._interpreters.values():
            log.info("language %s %s at %s", interp.language.name, interp.version, interp.path)
        self._host = host

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
        return {
            "languages": langs.language_table(self._interpreters or {}),
            "limits": {
                "default": self._limits.defaults.to_dict(),
                "max": dict(self._limits.maxima),
            },
            "sandbox": self._host.describe(),
        }

    # -- run time --

    async def execute(self, data: dict[str, Any], ctx: ExecutionContext) -> Outcome:
        """Run the program to its end, its timeout or its cancellation."""
        host = self._host
        if host.problem:
            return Outcome(None, JobError(ErrorType.INTERNAL, unavailable_message(host.problem)))
        language = langs.resolve_language(str(data.get("language", "python")))
        interp = (self._interpreters or {}).get(language.name) if language else None
        if language is None or interp is None:
            return Outcome(
                None,
                JobError(ErrorType.INTERNAL, f"language {data.get('language')!r} is not available"),
            )
        limits = validate_limits(data.get("limits"), self._limits)
        files = validate_files(data.get("files"), self.settings.max_body_bytes)
        files = {language.filename: data["code"].encode("utf-8"), **files}
        run_as = host.sandbox.run_as
        job = _new_job_dir(host, ctx.job_id, limits)
        steps = _Steps(host, job, ctx, data, limits)
        removing: asyncio.Future[tuple[OutputFiles, str | None]] | None = None
        try:
            try:
                ran = await steps.compile_and_run(language, interp, files)
            except DiskFull:
                message = f"the program and its input files do not fit in {limits.disk_mb} MB"
                return Outcome(None, JobError(ErrorType.DISK_LIMIT, message))
            if isinstance(ran, Outcome):
                return ran
            run, compile_output = ran
            owner_uid = run_as.uid if run_as else None
            outputs = job.path / OUTPUTS_DIR
            removing = asyncio.ensure_future(
                asyncio.to_thread(_collect_and_remove, job, steps.gauge, outputs, owner_uid)
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
            run.stats, encode_files(out.files), out.truncated, limits, compile_output,
            files_skipped=out.skipped, disk_full=disk_full,
        )  # fmt: skip
        return decide_outcome(run, language.name, ctx.timeout, extra)


@dataclasses.dataclass(slots=True)
class _Steps:
    """The sandboxed runs of one job: the compile step if any, then the program, in one
    work dir."""

    host: Host
    job: JobDir
    ctx: ExecutionContext
    data: Mapping[str, Any]
    limits: JobLimits
    gauge: DiskGauge = dataclasses.field(init=False)
    started: float = dataclasses.field(init=False)
    #: Compile steps run so far (a multi-test job's result reports it: one for all tests).
    compiles: int = dataclasses.field(default=0, init=False)

    def __post_init__(self) -> None:
        self.gauge = DiskGauge(self.job)
        self.started = time.monotonic()

    def _program(
        self,
        command: list[str],
        timeout: float,
        files: Mapping[str, bytes],
        workdir: JobDir | None = None,
        **more: Any,
    ) -> Program:
        """A run in the job's dir (shared quota gauge), or in ``workdir`` (its own gauge)."""
        ctx = self.ctx

        def on_progress(update: ProgressUpdate) -> None:
            ctx.report_progress(update.percent, update.message)

        return Program(
            command, workdir or self.job, timeout, job_id=ctx.job_id, files=files,
            dirs=(OUTPUTS_DIR,), env=self.data.get("env", {}), cancel=ctx.cancel_requested,
            on_progress=on_progress, gauge=None if workdir else self.gauge, **more,
        )  # fmt: skip

    async def compile_and_run(
        self, language: langs.Language, interp: langs.Interpreter, files: Mapping[str, bytes]
    ) -> Outcome | tuple[RunResult, str | None]:
        """The program's run and what its compiler printed; or the outcome of a failed
        compile step. ``files`` are written before the first step."""
        sandbox, ctx = self.host.sandbox, self.ctx
        compile_output: str | None = None
        if language.compiled:
            compile_timeout = min(COMPILE_TIMEOUT_S, ctx.timeout)
            build = await sandbox.run(
                self._program(language.compile_argv(interp.path), compile_timeout, files),
                COMPILE_LIMITS,
            )
            self.compiles += 1
            files = {}
            compile_output = (build.stdout + build.stderr)[: COMPILE_LIMITS.max_output_bytes]
            failed = compile_failure(build, build.stats, compile_timeout)
            if failed is not None:
                outcome = _compile_error(build, language.name, self.limits, compile_output, failed)
                if self.data.get("tests") and outcome.result is not None:
                    outcome.result.update(compile_error_tests(len(self.data["tests"])))
                return outcome
        if self.data.get("tests"):
            return await self.run_tests(language, interp, files, compile_output)
        timeout = max(0.1, ctx.timeout - (time.monotonic() - self.started))
        command = language.argv(interp.path, self.data.get("args", []), interp.runtime)
        stdin = str(self.data.get("stdin", "")).encode("utf-8", errors="replace")
        program = self._program(command, timeout, files, stdin=stdin, on_output=ctx.emit_output)
        return await sandbox.run(program, self.limits), compile_output

    async def run_tests(
        self,
        language: langs.Language,
        interp: langs.Interpreter,
        files: Mapping[str, bytes],
        compile_output: str | None,
    ) -> Outcome:
        """Run the (compiled) program once per test, each run in a fresh sandbox and a fresh
        work dir holding only the program's files (the sources and input files, and what the
        compile step made), and judge each (``multitest.run_tests``); the job completes
        whatever the verdicts."""
        sandbox, ctx = self.host.sandbox, self.ctx
        command = language.argv(interp.path, self.data.get("args", []), interp.runtime)
        run_as = sandbox.run_as
        if language.compiled:
            template = await asyncio.to_thread(_program_files, self.job, run_as)
            if template is None:
                message = "the compiled program's files do not fit in a test's work dir"
                return Outcome(None, JobError(ErrorType.DISK_LIMIT, message))
        else:
            template = ProgramFiles(dict(files), {})

        async def run_one(case: Case) -> CaseRun:
            timeout = max(0.1, ctx.timeout - (time.monotonic() - self.started))
            stdin = case.stdin.encode("utf-8", errors="replace")
            workdir = _new_job_dir(self.host, ctx.job_id, self.limits)
            try:
                await asyncio.to_thread(template.write, workdir, run_as)
                program = self._program(command, timeout, {}, workdir, stdin=stdin)
                run = await sandbox.run(program, self.limits)
            finally:
                await asyncio.to_thread(remove_job_dir, workdir)
            judged = decide_outcome(
                run, language.name, timeout, Collected(run.stats, limits=self.limits)
            )
            stats = run.stats
            return CaseRun(
                run.stdout, run.stderr, run.exit_code, run.signal, run.wall_time_ms,
                judged.error.type if judged.error else None,
                judged.error.message if judged.error else None,
                stats.cpu_time_ms if stats else None, stats.memory_peak_kb if stats else None,
                run.stdout_truncated, run.stderr_truncated,
            )  # fmt: skip

        cases = [Case.from_data(t) for t in self.data["tests"]]
        judged = await run_tests(
            cases, run_one, Judging.from_data(self.data), ctx.report_progress,
            ctx.cancel_requested.is_set,
        )  # fmt: skip
        result = {
            "language": language.name,
            "compile_output": compile_output,
            "compiled": self.compiles,
            **judged,
        }
        return Outcome(result, canceled=ctx.cancel_requested.is_set())


def _new_job_dir(host: Host, job_id: str, limits: JobLimits) -> JobDir:
    """A fresh work dir for a run of the job (the job's, or one test's), under the job's disk
    quota and owned by the sandbox uid."""
    assert host.work_root is not None
    return new_job_dir(
        host.work_root, job_id, host.sandbox.run_as, limits.disk_mb << 20, host.mount_job_dirs
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ProgramFiles:
    """What each test's fresh work dir starts with: the files, and for those the compile step
    left, their exec bit and modification time (so each test runs the very same build)."""

    files: dict[str, bytes]
    #: name -> (executable, mtime in ns)
    built: dict[str, tuple[bool, int]]

    def write(self, workdir: JobDir, owner: RunAs | None) -> None:
        write_files(workdir.path, self.files, (), owner)
        for name, (executable, mtime_ns) in self.built.items():
            path = workdir.path / name
            if executable:
                os.chmod(path, 0o700, follow_symlinks=False)
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def _program_files(job: JobDir, owner: RunAs | None) -> ProgramFiles | None:
    """The regular files of a compiled job's dir once its compile step ended (every process
    of it dead, so nothing changes under the walk), with their exec bits and times; None if
    they are more than a test's work dir takes."""
    found = collect_output_files(
        job.path, owner.uid if owner else None, job.quota_bytes or MAX_RESULT_FILES_BYTES,
        max_files=MAX_INPUT_FILES + MAX_COMPILED_FILES,
    )  # fmt: skip
    if found.truncated:
        return None
    built: dict[str, tuple[bool, int]] = {}
    for name in found.files:
        with contextlib.suppress(OSError):
            st = os.lstat(job.path / name)
            built[name] = (bool(st.st_mode & stat.S_IXUSR), st.st_mtime_ns)
    return ProgramFiles(found.files, built)


def _compile_error(
    build: RunResult, language: str, limits: JobLimits, compile_output: str, failed: str
) -> Outcome:
    extra = Collected(build.stats, {}, False, limits, compile_output)
    result = result_dict(build, language, extra)
    result.update(stdout="", stderr="", exit_code=None, signal=None)
    if build.canceled:
        return Outcome(result, canceled=True)
    return Outcome(result, JobError(ErrorType.COMPILE_ERROR, failed))


def _collect_and_remove(
    job: JobDir, gauge: DiskGauge, outputs: Path, owner_uid: int | None
) -> tuple[OutputFiles, str | None]:
    """Whether the job dir ended over its quota, and the files the program left in
    ``outputs``; then the job dir is removed."""
    try:
        return collect_output_files(outputs, owner_uid), gauge.final()
    finally:
        remove_job_dir(job)
