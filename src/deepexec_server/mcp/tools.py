"""The MCP tools DeepExec offers: their names, descriptions and input schemas, how their
arguments become job submissions, and how a job becomes a tool result. Pure: no I/O.

Two run tools (``execute_code``, ``generate_text``) run a job and return its result; five job
tools (``submit_job``, ``get_job``, ``wait_job``, ``cancel_job``, ``list_jobs``) let a host
without tasks drive a long job across turns without hitting its own tool-call timeout.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

import mcp_types as types
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepexec_sdk.job_data import CodeExecutionData, CodeLimits, TextGenerationData
from deepexec_sdk.types import (
    JobStatus,
    JobSubmitRequest,
    MCPJobStatusResponse,
)

from ..errors import DeepExecError
from .jobs import HostOffer

EXECUTE_CODE = "execute_code"
GENERATE_TEXT = "generate_text"
SUBMIT_JOB = "submit_job"
GET_JOB = "get_job"
WAIT_JOB = "wait_job"
CANCEL_JOB = "cancel_job"
LIST_JOBS = "list_jobs"

#: Tools that run a job to its end: with the tasks extension they answer with a task handle.
RUN_TOOLS = frozenset({EXECUTE_CODE, GENERATE_TEXT})
#: Tag on every job an MCP run tool submits, so ``list_jobs``/the REST API can find them.
MCP_TAG = "mcp"
MAX_WAIT_SECONDS = 60.0


class ToolArgumentError(DeepExecError, ValueError):
    """The arguments do not fit the tool's schema; reported as an ``isError`` result so the
    model can correct itself."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecuteCodeArgs(CodeExecutionData):
    """The job's data as the SDK declares it, and its timeout. The languages and the timeout
    maximum are the host's: ``tool_definitions`` writes them into the schema, and the server
    checks them when the job is submitted."""

    timeout: int = Field(default=60, ge=1, description="Wall-clock limit in seconds (default 60).")


class GenerateTextArgs(TextGenerationData):
    """The job's data as the SDK declares it (a ``prompt``, or ``messages``), and its timeout."""

    timeout: int = Field(
        default=120, ge=1, description="Wall-clock limit in seconds (default 120)."
    )


def _fields(model: type[BaseModel]) -> str:
    return ", ".join(
        name if field.is_required() else f"{name}?" for name, field in model.model_fields.items()
    )


class SubmitJobArgs(_Args):
    job_type: Literal["code_execution", "text_generation"] = Field(
        description="What to run: code_execution or text_generation."
    )
    data: dict[str, Any] = Field(
        description=f"Job data. code_execution: {{{_fields(CodeExecutionData)}}}. "
        f"text_generation (prompt or messages): {{{_fields(TextGenerationData)}}}."
    )
    name: str | None = Field(default=None, max_length=200, description="A name for the job.")
    timeout: int = Field(default=60, ge=1, description="Wall-clock limit in seconds.")
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")
    tags: list[str] = Field(default_factory=list, max_length=32, description="Tags for the job.")
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Where to POST the job's end, signed (Standard Webhooks).",
    )


class JobIdArgs(_Args):
    job_id: str = Field(min_length=1, description="A job id, as submit_job returned it.")


class WaitJobArgs(JobIdArgs):
    timeout_s: float = Field(
        default=30, ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait at most (0-60)."
    )


class CancelJobArgs(JobIdArgs):
    reason: str | None = Field(default=None, max_length=1000, description="Why, for the record.")


class ListJobsArgs(_Args):
    status: Literal["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELED"] | None = Field(
        default=None, description="Only jobs in this status."
    )
    tags: list[str] = Field(default_factory=list, description="Only jobs carrying all these tags.")
    name: str | None = Field(default=None, description="Only jobs with exactly this name.")
    limit: int = Field(default=20, ge=1, le=100, description="Page size (default 20).")
    cursor: str | None = Field(
        default=None, max_length=500, description="next_cursor of the previous page."
    )


ArgsT = TypeVar("ArgsT", bound=BaseModel)

_SPECS: dict[str, tuple[str, str, type[BaseModel]]] = {
    EXECUTE_CODE: (
        "Execute code",
        "Run a program in an isolated sandbox (no network) and "
        "return its stdout and stderr. A non-zero exit is reported as an error result carrying "
        "stderr. Sends progress notifications while it runs. For programs that may outlive "
        "your tool-call timeout, use submit_job and wait_job instead.",
        ExecuteCodeArgs,
    ),
    GENERATE_TEXT: (
        "Generate text",
        "Generate text from a prompt with the server's local language model and return it. "
        "Sends progress notifications while it runs.",
        GenerateTextArgs,
    ),
    SUBMIT_JOB: (
        "Submit job",
        "Start a DeepExec job (code_execution or text_generation) and return its job_id at "
        "once, without waiting. Follow it with get_job or wait_job; stop it with cancel_job.",
        SubmitJobArgs,
    ),
    GET_JOB: (
        "Get job",
        "Return a job's current status (PENDING, RUNNING, COMPLETED, FAILED, CANCELED), "
        "progress, and its result or error once it has ended.",
        JobIdArgs,
    ),
    WAIT_JOB: (
        "Wait for job",
        "Wait up to timeout_s seconds (at most 60) for a job to end, then return its status "
        "and result. If it is still running, call wait_job again.",
        WaitJobArgs,
    ),
    CANCEL_JOB: (
        "Cancel job",
        "Cancel a pending or running job; its processes are stopped. Fails if it already ended.",
        CancelJobArgs,
    ),
    LIST_JOBS: (
        "List jobs",
        "List your jobs, newest first, optionally filtered by status, tags or name. Each "
        "job is a summary without its output: get_job returns one job with its result.",
        ListJobsArgs,
    ),
}

_READ_ONLY = frozenset({GET_JOB, WAIT_JOB, LIST_JOBS})


def tool_definitions(*, legacy_tasks: bool, offer: HostOffer) -> list[types.Tool]:
    """Every tool with its JSON schema, fitted to what the host ``offer``s. ``legacy_tasks``:
    mark the run tools as accepting 2025-11-25 task augmentation (``execution.taskSupport``,
    gone in 2026-07-28)."""
    tools = []
    for name, (title, description, model) in _SPECS.items():
        execution = (
            types.ToolExecution(task_support="optional")
            if legacy_tasks and name in RUN_TOOLS
            else None
        )
        tools.append(
            types.Tool(
                name=name,
                title=title,
                description=_describe(name, description, offer),
                input_schema=_fit_schema(model.model_json_schema(), offer),
                execution=execution,
                annotations=types.ToolAnnotations(
                    title=title,
                    read_only_hint=name in _READ_ONLY,
                    destructive_hint=name == CANCEL_JOB,
                    open_world_hint=False,
                ),
            )
        )
    return tools


def _describe(name: str, description: str, offer: HostOffer) -> str:
    if name == EXECUTE_CODE and offer.languages:
        return f"{description} Languages: {', '.join(offer.languages)}."
    if name == GENERATE_TEXT and offer.models:
        return f"{description} Models: {', '.join(offer.models)}."
    return description


def _fit_schema(schema: dict[str, Any], offer: HostOffer) -> dict[str, Any]:
    """``schema`` with the host's languages as the ``language`` enum, and its maxima: the
    longest timeout, the most tokens and the code limits'."""
    props = schema.get("properties", {})
    if "language" in props and offer.languages:
        props["language"]["enum"] = list(offer.languages)
    if "timeout" in props and offer.max_timeout is not None:
        props["timeout"]["maximum"] = offer.max_timeout
    if "max_tokens" in props and offer.max_tokens is not None:
        props["max_tokens"]["maximum"] = offer.max_tokens
    limits = schema.get("$defs", {}).get(CodeLimits.__name__, {}).get("properties", {})
    for name, maximum in offer.limit_maxima:
        for choice in limits.get(name, {}).get("anyOf", ()):
            if choice.get("type") == "integer":
                choice["maximum"] = maximum
    return schema


def parse_args(model: type[ArgsT], arguments: dict[str, Any] | None) -> ArgsT:
    """Validate a tool's arguments, or raise ``ToolArgumentError`` naming each problem."""
    try:
        return model.model_validate(arguments or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ToolArgumentError(f"invalid arguments: {problems}") from None


def run_request(tool: str, arguments: dict[str, Any] | None) -> JobSubmitRequest:
    """The job a run tool submits."""
    if tool == EXECUTE_CODE:
        code = parse_args(ExecuteCodeArgs, arguments)
        return JobSubmitRequest(
            name=f"mcp {code.language}",
            job_type="code_execution",
            data=code.model_dump(exclude={"timeout"}, exclude_unset=True),
            timeout=code.timeout,
            tags=[MCP_TAG],
        )
    if tool == GENERATE_TEXT:
        text = parse_args(GenerateTextArgs, arguments)
        return JobSubmitRequest(
            name="mcp text",
            job_type="text_generation",
            data=text.model_dump(exclude={"timeout"}, exclude_unset=True),
            timeout=text.timeout,
            tags=[MCP_TAG],
        )
    raise ValueError(f"{tool!r} is not a run tool")


def submit_request(arguments: dict[str, Any] | None) -> JobSubmitRequest:
    """The job ``submit_job`` describes."""
    args = parse_args(SubmitJobArgs, arguments)
    try:
        return JobSubmitRequest(
            name=args.name or f"mcp {args.job_type}",
            job_type=args.job_type,
            data=args.data,
            timeout=args.timeout,
            priority=args.priority,
            tags=args.tags,
            webhook_url=args.webhook_url,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ToolArgumentError(f"invalid job: {problems}") from None


def list_status(args: ListJobsArgs) -> JobStatus | None:
    return JobStatus(args.status) if args.status else None


# --- results ----------------------------------------------------------------------------------


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(type="text", text=text)]


def error_result(message: str) -> types.CallToolResult:
    """A tool-level failure the model should see (not a protocol error)."""
    return types.CallToolResult(content=_text(message), is_error=True)


def data_result(payload: dict[str, Any], *, is_error: bool = False) -> types.CallToolResult:
    """A structured result whose text is the same JSON, for hosts that ignore
    ``structuredContent``."""
    return types.CallToolResult(
        content=_text(json.dumps(payload, indent=2)),
        structured_content=payload,
        is_error=is_error,
    )


def run_payload(status: MCPJobStatusResponse) -> dict[str, Any]:
    """A finished run's ``structuredContent``: job id, status, error, and the result's
    fields at the top (``stdout``/``stderr``/``exit_code`` or ``text``/``model``/``usage``)."""
    payload: dict[str, Any] = {"job_id": status.job_id, "status": str(status.status)}
    payload.update(status.result or {})
    payload["error"] = status.error.model_dump(mode="json") if status.error else None
    return payload


def run_text(status: MCPJobStatusResponse) -> str:
    """What a person (or a model) reads: the output itself, then what went wrong, if anything."""
    result = status.result or {}
    parts: list[str] = []
    if isinstance(result.get("text"), str):
        parts.append(result["text"])
    else:
        stdout, stderr = result.get("stdout"), result.get("stderr")
        if isinstance(stdout, str) and stdout:
            parts.append(stdout.rstrip("\n"))
        if isinstance(stderr, str) and stderr:
            parts.append("--- stderr ---\n" + stderr.rstrip("\n"))
        exit_code = result.get("exit_code")
        if isinstance(exit_code, int) and exit_code != 0 and status.error is None:
            parts.append(f"--- exit code {exit_code} ---")
    if status.status == JobStatus.CANCELED:
        parts.append(f"job {status.job_id} was cancelled")
    elif status.error is not None:
        parts.append(f"job {status.job_id} failed: {status.error.type}: {status.error.message}")
    return "\n".join(parts) if parts else "(no output)"


def run_result(status: MCPJobStatusResponse) -> types.CallToolResult:
    """A terminal job as the run tool's result; anything but COMPLETED is ``isError``."""
    return types.CallToolResult(
        content=_text(run_text(status)),
        structured_content=run_payload(status),
        is_error=status.status != JobStatus.COMPLETED,
    )


def status_payload(status: MCPJobStatusResponse) -> dict[str, Any]:
    """A job status as the job tools return it (the REST API's shape)."""
    payload: dict[str, Any] = status.model_dump(mode="json")
    return payload
