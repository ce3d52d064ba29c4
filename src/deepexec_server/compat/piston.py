"""The Piston v2 API over DeepExec's code jobs: ``GET /api/v2/runtimes`` and
``POST /api/v2/execute``, also under ``/api/v2/piston/`` (the public instance's prefix, which
some clients hard-code), with or without a trailing slash.

An execute request becomes one ``code_execution`` job of the caller's tenant (tagged
``piston``), with the same sandbox, limits and fair share as any other; the answer waits for
it and reports it in Piston's shape. Units are Piston's: milliseconds and bytes, ``-1`` for
the server's default. What differs from Piston, and why, is in the README ("Coming from
Piston").

The body is parsed as JSON whatever its ``Content-Type`` (a common client sends none). A
request names its API key in ``Authorization``, with or without ``Bearer``; Piston itself has
no keys, so an operator may name a tenant for keyless requests (``DEEPEXEC_PISTON_TENANT``).

The pure parts (runtime table, request validation, stage objects) are separate from the thin
route handlers.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import nodesemver
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deepexec_sdk.types import JobStatus, JobSubmitRequest, MCPJobStatusResponse

from ..errors import DeepExecError, ServiceError, Unauthorized
from ..executors import languages as langs
from ..views import job_status
from ..web.services import Services

#: The two path prefixes clients use.
PREFIXES = ("/api/v2", "/api/v2/piston")
#: Tag on every job this API submits.
TAG = "piston"
#: Piston's defaults, in milliseconds.
DEFAULT_COMPILE_TIMEOUT_MS = 10_000
DEFAULT_RUN_TIMEOUT_MS = 3_000
#: How long an execute request waits for its job beyond the job's own time limit (the job may
#: queue behind others); past it the job is cancelled and the answer is a 503.
QUEUE_WAIT_S = 300.0
#: The compile step's own limits in the code executor (``code.COMPILE_TIMEOUT_S`` and
#: ``limits.COMPILE_LIMITS``): the most a request may ask for, in Piston's units.
COMPILE_TIMEOUT_MAX_MS = 60_000
COMPILE_CPU_MAX_MS = 60_000
COMPILE_MEMORY_MAX_BYTES = 1024 * 2**20

#: DeepExec language -> Piston's name, aliases and ``runtime`` (Piston's package metadata).
PISTON_NAMES: Mapping[str, tuple[str, tuple[str, ...], str | None]] = {
    "python": ("python", ("py", "py3", "python3"), None),
    "javascript": ("javascript", ("node-javascript", "node-js", "javascript", "js"), "node"),
    "bash": ("bash", ("sh",), None),
    "c": ("c", ("gcc",), "gcc"),
    "cpp": ("c++", ("cpp", "g++"), "gcc"),
    "java": ("java", (), None),
    "rust": ("rust", ("rs",), None),
    "go": ("go", ("go", "golang"), None),
}
LIMIT_FIELDS = (
    "compile_timeout",
    "run_timeout",
    "compile_cpu_time",
    "run_cpu_time",
    "compile_memory_limit",
    "run_memory_limit",
)
_VERSION_RE = re.compile(r"\d+(?:\.\d+){0,2}")


class PistonError(DeepExecError):
    """An answer in Piston's error shape: ``{"message": ...}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class Runtime:
    """A language of this host as Piston lists it."""

    language: str
    version: str
    aliases: tuple[str, ...]
    runtime: str | None
    #: The DeepExec language it runs as.
    deepexec: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "language": self.language,
            "version": self.version,
            "aliases": list(self.aliases),
        }
        if self.runtime is not None:
            out["runtime"] = self.runtime
        return out


def semver_of(version: str | None) -> str:
    """A SemVer ``X.Y.Z`` from a tool's version string (``12.2.0-14+deb12u1`` -> ``12.2.0``)."""
    found = _VERSION_RE.search(version or "")
    parts = found.group(0).split(".") if found else []
    return ".".join([*parts, "0", "0", "0"][:3])


def runtime_table(languages: Iterable[Mapping[str, Any]]) -> list[Runtime]:
    """The host's languages (``GET /v1/languages`` rows) as Piston runtimes."""
    out = []
    for row in languages:
        name = str(row.get("name"))
        if name not in PISTON_NAMES:
            continue
        piston, aliases, runtime = PISTON_NAMES[name]
        out.append(Runtime(piston, semver_of(row.get("version")), aliases, runtime, name))
    return out


def find_runtime(runtimes: Sequence[Runtime], language: str, version: str) -> Runtime | None:
    """The highest version of ``language`` (a name or alias) that the SemVer range
    ``version`` allows, as Piston picks it."""
    named = [rt for rt in runtimes if language == rt.language or language in rt.aliases]
    best = nodesemver.max_satisfying([rt.version for rt in named], version, loose=True)
    return next((rt for rt in named if rt.version == best), None) if best else None


@dataclasses.dataclass(frozen=True, slots=True)
class Maxima:
    """The server's limits in Piston's units."""

    run_timeout_ms: int
    run_cpu_ms: int
    run_memory_bytes: int

    def of(self, field: str) -> int:
        return {
            "compile_timeout": COMPILE_TIMEOUT_MAX_MS,
            "run_timeout": self.run_timeout_ms,
            "compile_cpu_time": COMPILE_CPU_MAX_MS,
            "run_cpu_time": self.run_cpu_ms,
            "compile_memory_limit": COMPILE_MEMORY_MAX_BYTES,
            "run_memory_limit": self.run_memory_bytes,
        }[field]


def _number(body: Mapping[str, Any], field: str, maxima: Maxima) -> float | None:
    """The request's ``field``: None when absent or -1 (the server's default)."""
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PistonError(400, f"If specified, {field} must be a number")
    if value == -1:
        return None
    if value < 0:
        raise PistonError(400, f"{field} must be non-negative")
    limit = maxima.of(field)
    if value > limit:
        raise PistonError(400, f"{field} cannot exceed the configured limit of {limit}")
    return float(value)


def _decode(file: Mapping[str, Any], index: int) -> bytes:
    content = file["content"]
    encoding = file.get("encoding") or "utf8"
    try:
        if encoding == "utf8":
            return str(content).encode()
        if encoding == "base64":
            return base64.b64decode(content, validate=True)
        if encoding == "hex":
            return bytes.fromhex(content)
    except (binascii.Error, ValueError) as exc:
        raise PistonError(400, f"files[{index}].content is not valid {encoding}") from exc
    raise PistonError(400, f"files[{index}].encoding must be one of utf8, base64, hex")


def execute_request(
    body: Any, runtimes: Sequence[Runtime], maxima: Maxima
) -> tuple[Runtime, JobSubmitRequest]:
    """Validate an execute request as Piston does (its checks, order and texts) and make
    the job it describes."""
    if not isinstance(body, dict):
        body = {}
    language, version, files = body.get("language"), body.get("version"), body.get("files")
    if not isinstance(language, str):
        raise PistonError(400, "language is required as a string")
    if not isinstance(version, str):
        raise PistonError(400, "version is required as a string")
    if not isinstance(files, list):
        raise PistonError(400, "files is required as an array")
    for i, file in enumerate(files):
        if not isinstance(file, dict) or not isinstance(file.get("content"), str):
            raise PistonError(400, f"files[{i}].content is required as a string")
    runtime = find_runtime(runtimes, language, version)
    if runtime is None:
        raise PistonError(400, f"{language}-{version} runtime is unknown")
    if not any((f.get("encoding") or "utf8") == "utf8" for f in files):
        raise PistonError(400, "files must include at least one utf8 encoded file")
    limits = {field: _number(body, field, maxima) for field in LIMIT_FIELDS}
    stdin, args = body.get("stdin", ""), body.get("args", [])
    if stdin is None:
        stdin = ""
    if not isinstance(stdin, str):
        raise PistonError(400, "stdin must be a string")
    if args is None:
        args = []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise PistonError(400, "args must be an array of strings")
    main = _decode(files[0], 0)
    try:
        code = main.decode()
    except UnicodeDecodeError:
        raise PistonError(400, "files[0] (the program) must be UTF-8 text") from None
    data: dict[str, Any] = {"code": code, "language": runtime.deepexec, "stdin": stdin}
    if args:
        data["args"] = args
    extra = {
        str(f.get("name") or f"file{i}.code"): {
            "content": base64.b64encode(_decode(f, i)).decode(),
            "encoding": "base64",
        }
        for i, f in enumerate(files[1:], start=1)
    }
    if extra:
        data["files"] = extra
    job_limits: dict[str, int] = {}
    if limits["run_cpu_time"] is not None:
        job_limits["cpu_time_s"] = max(1, math.ceil(limits["run_cpu_time"] / 1000))
    if limits["run_memory_limit"] is not None:
        job_limits["memory_mb"] = max(1, math.ceil(limits["run_memory_limit"] / 2**20))
    if job_limits:
        data["limits"] = job_limits
    run_ms = limits["run_timeout"] or DEFAULT_RUN_TIMEOUT_MS
    compiled = (lang := langs.resolve_language(runtime.deepexec)) is not None and lang.compiled
    compile_ms = (limits["compile_timeout"] or DEFAULT_COMPILE_TIMEOUT_MS) if compiled else 0
    timeout = max(1, math.ceil((run_ms + compile_ms) / 1000))
    request = JobSubmitRequest(
        name=f"piston {runtime.language}",
        job_type="code_execution",
        data=data,
        timeout=timeout,
        tags=[TAG],
    )
    return runtime, request


#: DeepExec error type -> Piston stage status.
_STATUS_BY_ERROR = {
    "timeout": "TO",
    "cpu_limit": "TO",
    "memory_limit": "SG",
    "runtime_error": "RE",
    "compile_error": "RE",
}


def _stage(
    stdout: str,
    stderr: str,
    code: int | None,
    signal: str | None,
    status: str | None,
    message: str | None,
    result: Mapping[str, Any],
) -> dict[str, Any]:
    if status in ("TO", "OL", "EL") and signal is None:
        signal = "SIGKILL"  # Piston reports the kill that enforced the limit
    memory_kb = result.get("memory_peak_kb")
    return {
        "stdout": stdout,
        "stderr": stderr,
        "output": stdout + stderr,
        "code": None if signal is not None else code,
        "signal": signal,
        "message": message,
        "status": status,
        "cpu_time": result.get("cpu_time_ms"),
        "wall_time": result.get("wall_time_ms"),
        "memory": memory_kb * 1024 if isinstance(memory_kb, int) else None,
    }


def run_status(job: MCPJobStatusResponse) -> str | None:
    """The run stage's Piston status: RE, SG, TO, OL, EL, XX, or None when it succeeded."""
    result, error = job.result or {}, job.error
    if error is None and job.status == JobStatus.COMPLETED:
        return None
    if error is not None and error.type == "output_limit":
        return "OL" if result.get("stdout_truncated") else "EL"
    if error is not None and error.type == "runtime_error":
        return "SG" if result.get("signal") else "RE"
    if error is not None and error.type in _STATUS_BY_ERROR:
        return _STATUS_BY_ERROR[error.type]
    return "XX"


def execute_response(runtime: Runtime, job: MCPJobStatusResponse) -> dict[str, Any]:
    """A finished job as Piston's answer. A compiled language has a ``compile`` stage; when
    compiling fails, ``run`` is a copy of it, as in Piston."""
    result = job.result or {}
    error = job.error
    message = error.message if error is not None else None
    out: dict[str, Any] = {"language": runtime.language, "version": runtime.version}
    compiled = "compile_output" in result and result.get("compile_output") is not None
    if error is not None and error.type == "compile_error":
        compile_stage = _stage(
            "", str(result.get("compile_output") or ""), 1, None, "RE", message, result
        )
        out["compile"] = compile_stage
        out["run"] = dict(compile_stage)
        return out
    if compiled:
        out["compile"] = _stage(
            "", str(result.get("compile_output") or ""), 0, None, None, None, {}
        )
    out["run"] = _stage(
        str(result.get("stdout") or ""),
        str(result.get("stderr") or ""),
        result.get("exit_code"),
        result.get("signal"),
        run_status(job),
        message if job.status != JobStatus.COMPLETED else None,
        result,
    )
    if job.status == JobStatus.CANCELED:
        out["run"].update(status="XX", message="the job was cancelled")
    return out


# --- routes (thin) ----------------------------------------------------------------------------


def _answer(status: int, body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=status)


async def _tenant(request: Request, svc: Services) -> str:
    header = request.headers.get("authorization")
    if not header and svc.settings.piston_tenant:
        return svc.settings.piston_tenant
    if header and " " not in header.strip():
        header = f"Bearer {header.strip()}"  # Piston clients send the bare key
    return await svc.auth.tenant_for(header)


def _maxima(svc: Services) -> Maxima:
    limits = svc.settings.code_limits_max
    return Maxima(
        run_timeout_ms=svc.settings.max_timeout * 1000,
        run_cpu_ms=limits["cpu_time_s"] * 1000,
        run_memory_bytes=limits["memory_mb"] * 2**20,
    )


def _runtimes(svc: Services) -> list[Runtime]:
    described = svc.engine.describe().get("code_execution") or {}
    return runtime_table(described.get("languages") or [])


async def runtimes(request: Request) -> JSONResponse:
    """``GET /api/v2/runtimes``: the host's languages in Piston's shape."""
    svc: Services = request.app.state.services
    try:
        await _tenant(request, svc)
    except Unauthorized as exc:
        return _answer(401, {"message": exc.message})
    return _answer(200, [rt.to_json() for rt in _runtimes(svc)])


async def execute(request: Request) -> JSONResponse:
    """``POST /api/v2/execute``: run one program as a job and answer with its stages."""
    svc: Services = request.app.state.services
    try:
        tenant_id = await _tenant(request, svc)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise PistonError(400, "request body must be JSON") from None
        runtime, job_request = execute_request(body, _runtimes(svc), _maxima(svc))
        job, _ = await svc.engine.submit(tenant_id, job_request)
        job = await svc.engine.wait(tenant_id, job.id, job.timeout + QUEUE_WAIT_S)
        if not job.is_terminal:
            await svc.engine.cancel(tenant_id, job.id, "the Piston request gave up waiting")
            raise PistonError(503, "the server is too busy: the job did not run in time")
    except PistonError as exc:
        return _answer(exc.status, {"message": exc.message})
    except ServiceError as exc:
        status = 400 if exc.status_code == 422 else exc.status_code
        return _answer(status, {"message": exc.message})
    return _answer(200, execute_response(runtime, job_status(job)))


def router() -> APIRouter:
    """The Piston routes, under both prefixes, with and without a trailing slash."""
    api = APIRouter(tags=["Piston v2 compatibility"])
    for prefix in PREFIXES:
        for slash in ("", "/"):
            shown = prefix == PREFIXES[0] and not slash
            api.add_api_route(
                f"{prefix}/runtimes{slash}", runtimes, methods=["GET"], include_in_schema=shown
            )
            api.add_api_route(
                f"{prefix}/execute{slash}", execute, methods=["POST"], include_in_schema=shown
            )
    return api
