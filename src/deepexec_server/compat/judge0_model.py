"""The Judge0 CE 1.13.1 API's data, mapped onto DeepExec's code jobs (pure: no I/O).

A submission is one ``code_execution`` job of one test: ``stdin`` and ``expected_output``
become ``data.tests[0]``, compared by Judge0's rule (trailing whitespace of each line and
blank lines around the output do not count: ``judging.Compare.TRAILING_WHITESPACE``). The
job's ``result.tests[0]`` (its verdict, outputs, exit, time and memory) becomes the
submission's status and fields. Units are Judge0's: seconds, kilobytes. What differs from
Judge0, and why, is in the README ("Coming from Judge0").

The route handlers are in ``judge0``.
"""

from __future__ import annotations

import base64
import binascii
import math
import shlex
import signal
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from deepexec_sdk.types import JobStatus, JobSubmitRequest, MCPJobStatusResponse

from ..errors import DeepExecError
from .judge0_info import (
    COMPILE_ALLOWANCE_S,
    COMPILED_LANGUAGES,
    DEFAULTS,
    EXECUTABLE_FILE,
    EXECUTABLE_ID,
    MAXIMA,
    MINIMA,
    STATUS_BY_SIGNAL,
    STATUS_TEXT,
    TAG,
    Language,
    ServerMaxima,
)

#: Every field of a submission in 1.13.1 (``fields=*``: exactly these, in this order).
ALL_FIELDS: Sequence[str] = (
    "source_code", "language_id", "stdin", "expected_output", "stdout", "status_id",
    "created_at", "finished_at", "time", "memory", "stderr", "token", "number_of_runs",
    "cpu_time_limit", "cpu_extra_time", "wall_time_limit", "memory_limit", "stack_limit",
    "max_processes_and_or_threads", "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit", "max_file_size", "compile_output",
    "exit_code", "exit_signal", "message", "wall_time", "compiler_options",
    "command_line_arguments", "redirect_stderr_to_stdout", "callback_url", "additional_files",
    "enable_network", "status", "language",
)  # fmt: skip
DEFAULT_FIELDS: Sequence[str] = (
    "token", "time", "memory", "stdout", "stderr", "compile_output", "message", "status",
)  # fmt: skip
#: Fields carried base64-encoded with ``base64_encoded=true``.
ENCODED_IN = ("source_code", "stdin", "expected_output")
ENCODED_OUT = ("source_code", "stdin", "expected_output", "stdout", "stderr",
               "compile_output", "message")  # fmt: skip
_LIMIT_FIELDS = tuple(DEFAULTS)
_BOOL_FIELDS = (
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "redirect_stderr_to_stdout",
    "enable_network",
)
MAX_ARGUMENTS_CHARS = 512


class Judge0Error(DeepExecError):
    """An answer in one of Judge0's error shapes: a field hash (``errors``, 422) or
    ``{"error": message}``."""

    def __init__(
        self,
        status: int,
        message: str = "",
        errors: Mapping[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message or str(errors))
        self.status = status
        self.message = message
        self.errors = dict(errors or {})

    def body(self) -> dict[str, Any]:
        return dict(self.errors) if self.errors else {"error": self.message}


def _invalid(field: str, message: str) -> Judge0Error:
    return Judge0Error(422, errors={field: [message]})


# --- requests ---------------------------------------------------------------------------------


def decode_text(value: Any, field: str, encoded: bool) -> str | None:
    """A request's text field, base64-decoded when ``encoded``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(field, "must be a string")
    if not encoded:
        return value
    try:
        return _base64_bytes(value).decode("utf-8")
    except (binascii.Error, ValueError):
        raise Judge0Error(400, f"{field} is not valid base64 of UTF-8 text") from None


def _base64_bytes(value: str) -> bytes:
    """Base64 as Judge0's clients send it (line breaks allowed); ``binascii.Error`` if not."""
    return base64.b64decode("".join(value.split()), validate=True)


def _executable(value: Any, encoded: bool) -> str:
    """Judge0 "Executable"'s ``source_code`` as base64 of the binary (raw text unencoded)."""
    if not isinstance(value, str) or not value:
        raise _invalid("source_code", "can't be blank")
    try:
        binary = _base64_bytes(value) if encoded else value.encode("utf-8")
    except binascii.Error:
        raise Judge0Error(400, "source_code is not valid base64") from None
    return base64.b64encode(binary).decode()


def _number(body: Mapping[str, Any], field: str, server_max: float | None) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _invalid(field, "is not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(field, "is not a number")
    low = MINIMA.get(field, 0)
    if value < low:
        raise _invalid(field, f"must be greater than or equal to {_plain(low)}")
    high = MAXIMA[field] if server_max is None else min(MAXIMA[field], server_max)
    if value > high:
        raise _invalid(field, f"must be less than or equal to {_plain(high)}")
    return float(value)


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


#: The webhook format of a submission's ``callback_url`` (``webhooks.messages``).
JUDGE0_WEBHOOK = "judge0"


def submission_request(
    body: Any,
    languages: Sequence[Language],
    maxima: ServerMaxima,
    *,
    encoded: bool,
) -> JobSubmitRequest:
    """Validate one submission as Judge0 does (its field errors) and make its job."""
    if not isinstance(body, dict):
        raise Judge0Error(400, "the submission must be a JSON object")
    lang_id = body.get("language_id")
    if lang_id is None or lang_id == "":
        raise _invalid("language_id", "can't be blank")
    try:
        lang_number = int(lang_id)
    except (TypeError, ValueError):
        raise _invalid("language_id", "is not a number") from None
    language = next((lang for lang in languages if lang.id == lang_number), None)
    if language is None:
        raise _invalid("language_id", f"language with id {lang_number} doesn't exist")
    files: dict[str, Any] = {}
    if language.id == EXECUTABLE_ID:
        binary = _executable(body.get("source_code"), encoded)
        files[EXECUTABLE_FILE] = {"content": binary, "encoding": "base64"}
        source = f'chmod +x {EXECUTABLE_FILE} && exec ./{EXECUTABLE_FILE} "$@"\n'
    else:
        source = decode_text(body.get("source_code"), "source_code", encoded) or ""
        if not source:
            raise _invalid("source_code", "can't be blank")
    stdin = decode_text(body.get("stdin"), "stdin", encoded) or ""
    expected = decode_text(body.get("expected_output"), "expected_output", encoded)
    values = {f: _number(body, f, maxima.of(f)) for f in _LIMIT_FIELDS}
    _refuse_unsupported(body)
    args = body.get("command_line_arguments")
    if args is not None and (not isinstance(args, str) or len(args) > MAX_ARGUMENTS_CHARS):
        raise _invalid("command_line_arguments", f"is too long (maximum is {MAX_ARGUMENTS_CHARS})")
    data: dict[str, Any] = {
        "code": source,
        "language": language.language,
        "tests": [{"stdin": stdin, "expected_output": expected}],
        "compare": "trailing_whitespace",
    }
    if files:
        data["files"] = files
    if args:
        try:
            data["args"] = shlex.split(args)
        except ValueError as exc:
            raise _invalid("command_line_arguments", f"cannot be split: {exc}") from None
    limits = job_limits(values)
    if limits:
        data["limits"] = limits
    wall = values["wall_time_limit"] or DEFAULTS["wall_time_limit"]
    allowance = COMPILE_ALLOWANCE_S if language.language in COMPILED_LANGUAGES else 0
    return JobSubmitRequest(
        name=f"judge0 {language.id}",
        job_type="code_execution",
        data=data,
        timeout=max(1, math.ceil(wall)) + allowance,
        tags=[TAG, f"judge0-lang-{language.id}"],
        # Sent as Judge0 sends it (a PUT of the submission), signed: ``JUDGE0_WEBHOOK``.
        webhook_url=body.get("callback_url") or None,
    )


def job_limits(values: Mapping[str, float | None]) -> dict[str, int]:
    """The limits a request set explicitly, in DeepExec's units (the others stay the
    server's defaults, which suit each language: a JVM needs more threads than 60)."""
    out: dict[str, int] = {}
    if values.get("cpu_time_limit") is not None:
        cpu = values["cpu_time_limit"] or 0.0
        extra = values.get("cpu_extra_time")
        extra = DEFAULTS["cpu_extra_time"] if extra is None else extra
        out["cpu_time_s"] = max(1, math.ceil(cpu + extra))
    if values.get("memory_limit") is not None:
        out["memory_mb"] = max(1, math.ceil((values["memory_limit"] or 0) / 1024))
    if values.get("max_processes_and_or_threads") is not None:
        out["max_processes"] = max(1, int(values["max_processes_and_or_threads"] or 1))
    if values.get("max_file_size") is not None:
        out["max_file_size_mb"] = max(1, math.ceil((values["max_file_size"] or 0) / 1024))
    return out


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Judge0 features this server does not offer (``/config_info`` says so too)."""
    if body.get("compiler_options"):
        raise _invalid("compiler_options", "are not enabled on this server")
    if body.get("enable_network"):
        raise _invalid("enable_network", "is not allowed on this server")
    if body.get("redirect_stderr_to_stdout"):
        raise _invalid("redirect_stderr_to_stdout", "is not supported by this server")
    if body.get("additional_files"):
        raise _invalid("additional_files", "are not enabled on this server")
    callback = body.get("callback_url")
    if callback is not None and not isinstance(callback, str):
        raise _invalid("callback_url", "is not a valid URL")
    for field in _BOOL_FIELDS:
        value = body.get(field)
        if value is not None and not isinstance(value, bool):
            raise _invalid(field, "must be true or false")


def parse_fields(raw: str | None, default: Sequence[str] = DEFAULT_FIELDS) -> list[str]:
    """``fields=a,b`` or ``*``; Judge0's 400 for an unknown one."""
    if not raw:
        return list(default)
    if raw.strip() == "*":
        return list(ALL_FIELDS)
    wanted = [f.strip() for f in raw.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in ALL_FIELDS]
    if unknown:
        raise Judge0Error(400, f"invalid fields: [{', '.join(unknown)}]")
    return wanted


# --- submissions ------------------------------------------------------------------------------


def status_of(job: MCPJobStatusResponse) -> int:
    """The Judge0 status id of a job (see the module's docstring)."""
    if job.status == JobStatus.PENDING:
        return 1
    if job.status == JobStatus.RUNNING:
        return 2
    error = job.error.type if job.error is not None else None
    if error == "compile_error":
        return 6
    if job.status != JobStatus.COMPLETED:
        return 13
    test = first_test(job)
    if test is None:
        return 13
    verdict = test.get("verdict")
    if verdict == "accepted":
        return 3
    if verdict == "wrong_answer":
        return 4
    if verdict == "time_limit":
        return 5
    if verdict == "output_limit":
        return 8
    if verdict in ("runtime_error", "memory_limit"):
        sig = test.get("signal")
        if sig:
            return STATUS_BY_SIGNAL.get(str(sig), 12)
        return 11 if test.get("exit_code") not in (None, 0) else 12
    return 13


def first_test(job: MCPJobStatusResponse) -> Mapping[str, Any] | None:
    tests = (job.result or {}).get("tests")
    if isinstance(tests, list) and tests and isinstance(tests[0], Mapping):
        return tests[0]
    return None


def _seconds(ms: object) -> str | None:
    return f"{ms / 1000:.3f}" if isinstance(ms, int | float) else None


def _signal_number(name: object) -> int | None:
    if not name:
        return None
    try:
        return int(signal.Signals[str(name)])
    except KeyError:
        return None


def _timestamp(when: datetime | None) -> str | None:
    """Judge0's timestamps: UTC with milliseconds, ``2024-04-03T05:40:51.306Z``."""
    if when is None:
        return None
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _message(job: MCPJobStatusResponse, status: int, test: Mapping[str, Any]) -> str | None:
    if status in (1, 2, 3, 4):
        return None
    if job.status == JobStatus.CANCELED:
        return "the submission was cancelled"
    if status == 11:
        return f"Exited with error status {test.get('exit_code')}"
    if status == 5:
        return "Time limit exceeded"
    if test.get("error"):
        return str(test["error"].get("message") or "") or None
    return job.error.message if job.error is not None else None


def submission(
    job: MCPJobStatusResponse,
    request: Mapping[str, Any],
    languages: Sequence[Language],
    fields: Sequence[str],
    *,
    encoded: bool,
) -> dict[str, Any]:
    """The job as a Judge0 submission with ``fields``. ``request`` is the job's data."""
    status = status_of(job)
    result = job.result or {}
    test = first_test(job) or {}
    tests = request.get("tests") or [{}]
    lang_id = _language_id(job)
    lang = next((lang for lang in languages if lang.id == lang_id), None)
    limits = request.get("limits") or {}
    values: dict[str, Any] = {
        "source_code": _source_code(request, lang_id, encoded),
        "language_id": lang_id,
        "stdin": tests[0].get("stdin"),
        "expected_output": tests[0].get("expected_output"),
        # Judge0 answers null, not "", for an empty output (its isolate job's rule).
        "stdout": (test.get("stdout") or None) if job.is_terminal else None,
        "status_id": status,
        "created_at": _timestamp(job.created_at),
        "finished_at": _timestamp(job.finished_at),
        "time": _seconds(test.get("cpu_time_ms")),
        "memory": test.get("memory_peak_kb"),
        "stderr": (test.get("stderr") or None) if job.is_terminal else None,
        "token": job.job_id,
        "number_of_runs": 1,
        "cpu_time_limit": f"{limits.get('cpu_time_s') or DEFAULTS['cpu_time_limit']:.1f}",
        "cpu_extra_time": f"{DEFAULTS['cpu_extra_time']:.1f}",
        "wall_time_limit": f"{DEFAULTS['wall_time_limit']:.1f}",
        "memory_limit": (limits.get("memory_mb") or 0) * 1024 or int(DEFAULTS["memory_limit"]),
        "stack_limit": int(DEFAULTS["stack_limit"]),
        "max_processes_and_or_threads": limits.get("max_processes")
        or int(DEFAULTS["max_processes_and_or_threads"]),
        "enable_per_process_and_thread_time_limit": False,
        "enable_per_process_and_thread_memory_limit": False,
        "max_file_size": (limits.get("max_file_size_mb") or 0) * 1024
        or int(DEFAULTS["max_file_size"]),
        "compile_output": result.get("compile_output") or None,
        "exit_code": test.get("exit_code"),
        "exit_signal": _signal_number(test.get("signal")),
        "message": _message(job, status, test) if job.is_terminal else None,
        "wall_time": _seconds(test.get("wall_time_ms")),
        "compiler_options": None,
        "command_line_arguments": shlex.join(request["args"]) if request.get("args") else None,
        "redirect_stderr_to_stdout": False,
        "callback_url": None,
        "additional_files": None,
        "enable_network": False,
        "status": {"id": status, "description": STATUS_TEXT[status]},
        "language": lang.row() if lang is not None else {"id": lang_id, "name": None},
    }
    out = {f: values[f] for f in fields}
    if encoded:
        for field in ENCODED_OUT:
            if field == "source_code" and lang_id == EXECUTABLE_ID:
                continue  # already base64 of the binary
            if isinstance(out.get(field), str):
                out[field] = base64.b64encode(out[field].encode()).decode()
    return out


def _source_code(request: Mapping[str, Any], lang_id: int | None, encoded: bool) -> str | None:
    """The submitted source; for "Executable", the binary (base64 when ``encoded``, else as
    text where it is UTF-8)."""
    if lang_id != EXECUTABLE_ID:
        return request.get("code")
    file = (request.get("files") or {}).get(EXECUTABLE_FILE) or {}
    binary = file.get("content") if isinstance(file, Mapping) else None
    if not isinstance(binary, str) or encoded:
        return binary
    return base64.b64decode(binary).decode("utf-8", errors="replace")


def _language_id(job: MCPJobStatusResponse) -> int | None:
    for tag in job.tags:
        if tag.startswith("judge0-lang-"):
            try:
                return int(tag.removeprefix("judge0-lang-"))
            except ValueError:
                return None
    return None
