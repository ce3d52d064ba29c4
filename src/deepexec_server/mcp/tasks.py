"""DeepExec jobs as MCP tasks, in both wire designs. Pure: a job status in, a JSON object out.

- 2026-07-28, extension ``io.modelcontextprotocol/tasks`` (SEP-2663): flat handles
  (``resultType: "task"``), ``ttlMs``/``pollIntervalMs``, the result inline in ``tasks/get``.
  A run that ends with ``isError`` is ``completed`` (``failed`` is for protocol errors only).
- 2025-11-25, experimental tasks in core (SEP-1686): ``{"task": {...}}``, ``ttl``/
  ``pollInterval``, the result from ``tasks/result``; an ``isError`` run is ``failed``.

The task id is the job id: 128 random bits, so it is an unguessable bearer handle, and every
lookup goes through the caller's tenant anyway.
"""

from __future__ import annotations

from typing import Any, Literal

import mcp_types as types

from deepexec_sdk.types import JobStatus, MCPJobStatusResponse, MCPJobSummary

from .progress import status_message
from .tools import run_result

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
RELATED_TASK_META = "io.modelcontextprotocol/related-task"
#: How often a client should poll ``tasks/get``; jobs change at human speed.
POLL_INTERVAL_MS = 500

TaskStatus = Literal["working", "completed", "failed", "cancelled"]


class TaskIdParams(types.RequestParams):
    """Params of ``tasks/get``, ``tasks/cancel``, ``tasks/result``: ``{"taskId": ...}``."""

    task_id: str


class TaskListParams(types.RequestParams):
    """Params of the 2025-11-25 ``tasks/list``: ``{"cursor"?: ...}``."""

    cursor: str | None = None


def task_status(status: JobStatus, *, legacy: bool) -> TaskStatus:
    """A job status as a task status in the given design."""
    if status in (JobStatus.PENDING, JobStatus.RUNNING):
        return "working"
    if status == JobStatus.CANCELED:
        return "cancelled"
    if status == JobStatus.FAILED and legacy:
        return "failed"
    return "completed"


def _fields(status: MCPJobSummary, *, legacy: bool) -> dict[str, Any]:
    # Jobs are kept until an operator deletes them, so retention is unlimited (null).
    return {
        "taskId": status.job_id,
        "status": task_status(status.status, legacy=legacy),
        "statusMessage": status_message(status),
        "createdAt": status.created_at.isoformat(),
        "lastUpdatedAt": status.updated_at.isoformat(),
        ("ttl" if legacy else "ttlMs"): None,
        ("pollInterval" if legacy else "pollIntervalMs"): POLL_INTERVAL_MS,
    }


def call_tool_result(status: MCPJobStatusResponse) -> dict[str, Any]:
    """A terminal job's ``CallToolResult`` as JSON (what the synchronous call returns)."""
    result: dict[str, Any] = run_result(status).model_dump(
        by_alias=True, mode="json", exclude_none=True
    )
    return result


def task_handle(status: MCPJobStatusResponse) -> dict[str, Any]:
    """2026-07-28: the flat ``CreateTaskResult`` a ``tools/call`` answers with."""
    return {"resultType": "task", **_fields(status, legacy=False)}


def task_detail(status: MCPJobStatusResponse) -> dict[str, Any]:
    """2026-07-28: the ``tasks/get`` result, with the tool result inline once completed."""
    detail = {"resultType": "complete", **_fields(status, legacy=False)}
    if detail["status"] == "completed":
        detail["result"] = call_tool_result(status)
    return detail


def legacy_created(status: MCPJobStatusResponse) -> dict[str, Any]:
    """2025-11-25: the ``CreateTaskResult`` a task-augmented ``tools/call`` answers with."""
    return {"task": _fields(status, legacy=True)}


def legacy_task(status: MCPJobSummary) -> dict[str, Any]:
    """2025-11-25: a ``Task`` (the result of ``tasks/get`` and ``tasks/cancel``)."""
    return _fields(status, legacy=True)


def legacy_payload(status: MCPJobStatusResponse) -> dict[str, Any]:
    """2025-11-25: the ``tasks/result`` answer: the tool result, tagged with its task."""
    result = call_tool_result(status)
    result["_meta"] = {**result.get("_meta", {}), RELATED_TASK_META: {"taskId": status.job_id}}
    return result
