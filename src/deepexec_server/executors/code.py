"""The ``code_execution`` executor: validate a program, run it sandboxed, report the outcome.

Job data::

    {"code": "print(1)", "language": "python", "stdin": "", "args": [], "env": {}}

Languages: python (py, python3), javascript (js, node, nodejs), bash (sh, shell). The
program runs in bubblewrap as an unprivileged uid (see ``sandbox``); its stdout/stderr stream
to the job's events and the first ``Settings.max_output_bytes`` of each are kept in the
result. A program reports progress by writing ``PERCENT [message]`` lines to the file
descriptor in ``$DEEPEXEC_PROGRESS_FD`` (see ``_progress_helper`` for one-liners).

Output beyond the cap is drained and discarded (``stdout_truncated``/``stderr_truncated``
set); the program keeps running until it ends or reaches its time limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..domain import ErrorType, JobError
from ..settings import Settings
from . import languages as langs
from ._progress_helper import ProgressUpdate
from .base import ExecutionContext, JobDataError, Outcome
from .probe import ProbeLine, find_prlimit, probe_host, sandbox_problem
from .sandbox import (
    SANDBOX_HOME,
    Limits,
    RunAs,
    RunRequest,
    RunResult,
    WorkDirError,
    become_subreaper,
    bwrap_argv,
    default_work_root,
    ensure_work_root,
    env_name_problem,
    masked_dirs,
    new_job_dir,
    open_pipe,
    prlimit_args,
    remove_job_dir,
    resolve_run_as,
    run_program,
    sandbox_env,
    sweep_stale_job_dirs,
    write_job_file,
)

log = logging.getLogger("deepexec_server.sandbox")

MAX_CODE_BYTES = 1024 * 1024
MAX_STDIN_BYTES = 1024 * 1024
MAX_ARGS = 100
MAX_ARG_BYTES = 64 * 1024
MAX_ENV_VARS = 64
MAX_ENV_VALUE_BYTES = 32 * 1024
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ALLOWED_KEYS = frozenset({"code", "language", "stdin", "args", "env"})


# --- validation (pure) ------------------------------------------------------------------------


def _bad(field: str | list[str | int], msg: str) -> JobDataError:
    loc = ["data", *(field if isinstance(field, list) else [field])]
    where = ".".join(str(p) for p in loc)
    return JobDataError(f"{where}: {msg}", details=[{"loc": loc, "msg": msg}])


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def validate_code_data(
    data: Mapping[str, Any], available: Mapping[str, object] | None = None
) -> dict[str, Any]:
    """Check a code job's ``data`` and return it normalised (canonical language name, every
    field present). ``available``: languages this host can run, if known.

    Raises ``JobDataError`` naming the first bad field.
    """
    if not isinstance(data, Mapping):
        raise JobDataError(
            "data must be an object", details=[{"loc": ["data"], "msg": "not an object"}]
        )
    unknown = sorted(str(k) for k in data if k not in ALLOWED_KEYS)
    if unknown:
        raise _bad(
            unknown[0],
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(ALLOWED_KEYS))}",
        )

    code = data.get("code")
    if not isinstance(code, str):
        raise _bad("code", "required, a string" if code is None else "must be a string")
    if _utf8_len(code) > MAX_CODE_BYTES:
        raise _bad("code", f"longer than {MAX_CODE_BYTES} bytes")
    if "\x00" in code:
        raise _bad("code", "contains a NUL character")

    raw_lang = data.get("language", "python")
    if raw_lang is None:
        raw_lang = "python"
    if not isinstance(raw_lang, str):
        raise _bad("language", "must be a string")
    language = langs.resolve_language(raw_lang)
    supported = langs.supported_names()
    if language is None:
        raise _bad(
            "language",
            f"unsupported language {raw_lang!r}; supported: {', '.join(supported)} "
            "(aliases: py, python3, js, node, nodejs, sh, shell)",
        )
    if available is not None and language.name not in available:
        raise _bad(
            "language",
            f"{language.name} is not installed on this server; available: "
            f"{', '.join(n for n in supported if n in available) or 'none'}",
        )

    stdin = data.get("stdin", "")
    if stdin is None:
        stdin = ""
    if not isinstance(stdin, str):
        raise _bad("stdin", "must be a string")
    if _utf8_len(stdin) > MAX_STDIN_BYTES:
        raise _bad("stdin", f"longer than {MAX_STDIN_BYTES} bytes")

    args = data.get("args", [])
    if args is None:
        args = []
    if not isinstance(args, list):
        raise _bad("args", "must be a list of strings")
    if len(args) > MAX_ARGS:
        raise _bad("args", f"at most {MAX_ARGS} arguments, got {len(args)}")
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise _bad(["args", i], "must be a string")
        if "\x00" in arg or _utf8_len(arg) > MAX_ARG_BYTES:
            raise _bad(["args", i], f"must be at most {MAX_ARG_BYTES} bytes, without NUL")

    env = data.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, Mapping):
        raise _bad("env", "must be an object of string values")
    if len(env) > MAX_ENV_VARS:
        raise _bad("env", f"at most {MAX_ENV_VARS} variables, got {len(env)}")
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise _bad(["env", str(name)], "name must match ^[A-Za-z_][A-Za-z0-9_]*$")
        problem = env_name_problem(name)
        if problem:
            raise _bad(["env", name], problem)
        if not isinstance(value, str):
            raise _bad(["env", name], "value must be a string")
        if "\x00" in value or _utf8_len(value) > MAX_ENV_VALUE_BYTES:
            raise _bad(
                ["env", name], f"value must be at most {MAX_ENV_VALUE_BYTES} bytes, without NUL"
            )

    return {
        "code": code,
        "language": language.name,
        "stdin": stdin,
        "args": list(args),
        "env": dict(env),
    }


# --- outcome (pure) ---------------------------------------------------------------------------


def result_dict(run: RunResult, language: str) -> dict[str, Any]:
    """The job's ``result``: what the program did, whatever the verdict."""
    return {
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


def _format_seconds(timeout: float) -> str:
    return f"{timeout:g}"


def decide_outcome(run: RunResult, language: str, timeout: float) -> Outcome:
    """Map a run to the job's outcome: cancel > timeout > sandbox failure > exit status."""
    result = result_dict(run, language)
    if run.canceled:
        return Outcome(result, canceled=True)
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


def unavailable_message(reason: str) -> str:
    """The error a code job gets when the host cannot sandbox it."""
    return (
        f"sandbox unavailable: {reason}; install bubblewrap (scripts/setup-sandbox.sh) "
        "or start with --unsafe-no-sandbox"
    )


# --- the executor -----------------------------------------------------------------------------


class CodeExecutor:
    """Runs ``code_execution`` jobs in a bubblewrap sandbox. See the module docstring."""

    job_type = "code_execution"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._probe: list[ProbeLine] = []
        self._interpreters: dict[str, langs.Interpreter] | None = None
        self._problem: str | None = "executor not started"
        self._run_as: RunAs | None = None
        self._prlimit: str | None = None
        self._bwrap: str | None = None
        self._work_root: Path | None = None
        self._masks: list[str] = []

    # -- lifecycle --

    async def start(self) -> None:
        """Probe the host and find interpreters (off the event loop). Never raises for a host
        that cannot sandbox: code jobs then fail with a clear error instead."""
        await asyncio.to_thread(self._start_blocking)

    def _start_blocking(self) -> None:
        from .probe import find_bwrap

        # Before the probe, so that even its test sandbox's init is adopted and reaped.
        subreaper = become_subreaper()
        self._probe = probe_host(self.settings)
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
        self._prlimit = find_prlimit()
        problem = sandbox_problem(self._probe)
        try:
            self._run_as = resolve_run_as(self.settings.sandbox_user)
        except LookupError as exc:
            problem = problem or str(exc)
        try:
            root = Path(self.settings.work_dir) if self.settings.work_dir else default_work_root()
            self._work_root = ensure_work_root(root)
            for stale in sweep_stale_job_dirs(self._work_root):
                log.info("removed stale work dir %s", stale)
        except (OSError, WorkDirError) as exc:
            problem = problem or f"work dir unusable: {exc}"
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

    async def close(self) -> None:
        """Nothing to release: every run cleans up after itself."""

    # -- submit time --

    def validate(self, data: Mapping[str, Any], timeout: int) -> dict[str, Any]:
        """Check and normalise a code job's data (see ``validate_code_data``)."""
        return validate_code_data(data, self._interpreters)

    def describe(self) -> dict[str, Any]:
        """Languages (name, version, absolute path) and the sandbox probe lines."""
        mode = "unavailable" if self._problem else ("bubblewrap" if self._bwrap else "unsafe")
        return {
            "languages": langs.language_table(self._interpreters or {}),
            "sandbox": {
                "mode": mode,
                "problem": self._problem,
                "run_as": self._run_as.name if self._run_as else None,
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
        job_dir = new_job_dir(self._work_root, ctx.job_id, self._run_as)
        try:
            write_job_file(job_dir, language.filename, data["code"], self._run_as)
            request = self._build_request(data, language, interp, job_dir, ctx.timeout)

            def on_progress(update: ProgressUpdate) -> None:
                ctx.report_progress(update.percent, update.message)

            run = await run_program(request, ctx.cancel_requested, ctx.emit_output, on_progress)
        finally:
            await asyncio.to_thread(remove_job_dir, job_dir)
        return decide_outcome(run, language.name, ctx.timeout)

    def _build_request(
        self,
        data: Mapping[str, Any],
        language: langs.Language,
        interp: langs.Interpreter,
        job_dir: Path,
        timeout: float,
    ) -> RunRequest:
        pipe = open_pipe()
        status = open_pipe() if self._bwrap else None
        try:
            command = language.argv(interp.path, data.get("args", []))
            prefix = (
                prlimit_args(self._prlimit, Limits.for_timeout(timeout)) if self._prlimit else []
            )
            if self._bwrap:
                env = sandbox_env(SANDBOX_HOME, data.get("env", {}), pipe[1])
                argv = bwrap_argv(
                    self._bwrap,
                    job_dir=str(job_dir),
                    masks=self._masks,
                    env=env,
                    command=command,
                    status_fd=status[1] if status else None,
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
                stdin=str(data.get("stdin", "")).encode("utf-8", errors="replace"),
                timeout=timeout,
                max_output_bytes=self.settings.max_output_bytes,
                run_as=self._run_as,
                sandboxed=self._bwrap is not None,
                progress_pipe=pipe,
                status_pipe=status,
            )
        except BaseException:
            for fd in (*pipe, *(status or ())):
                os.close(fd)
            raise
