"""The MCP server: one low-level SDK ``Server`` whose handlers drive jobs through ``JobOps``.

Which ``JobOps`` a request uses is the transport's business (``OpsResolver``): the HTTP
endpoint binds the caller's tenant from its bearer key, stdio uses the SDK client.

Serves both protocol eras the SDK speaks. Run tools answer synchronously (with progress
notifications) unless the client opted into tasks: per request with the 2026-07-28 tasks
extension, or with ``params.task`` on a 2025-11-25 connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from deepexec_sdk import __version__
from deepexec_sdk.types import MCPJobStatusResponse

from . import tasks, tools
from .jobs import JobOps, JobOpsError
from .progress import TOTAL, ProgressTracker

logger = logging.getLogger("deepexec_server.mcp")

OpsResolver = Callable[[ServerRequestContext[Any, Any]], JobOps]
P = TypeVar("P")
TaskHandler = Callable[[ServerRequestContext[Any, Any], P], Awaitable[HandlerResult]]

#: The one protocol revision whose core carries (experimental) tasks.
LEGACY_TASKS_VERSION = "2025-11-25"
#: How long one wait on a job lasts before the loop looks again.
WAIT_SLICE_SECONDS = 60.0
#: How long a 2025-11-25 ``tasks/cancel`` waits for the job to stop (it must answer cancelled).
LEGACY_CANCEL_WAIT_SECONDS = 10.0

INSTRUCTIONS = (
    "DeepExec runs untrusted code in a sandbox and generates text with a local model, as jobs. "
    "execute_code and generate_text run one job and return its result. For work that may take "
    "longer than your tool-call timeout, submit_job returns a job_id at once; then call "
    "wait_job (up to 60 s per call) or get_job until it ends, and cancel_job to stop it."
)


def declares_tasks_extension(ctx: ServerRequestContext[Any, Any]) -> bool:
    """This request is 2026-07-28 and its client declared the tasks extension. Both checks:
    legacy clients may list extensions in ``initialize`` too."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    caps = ctx.session.client_capabilities
    return bool(caps and caps.extensions and tasks.TASKS_EXTENSION in caps.extensions)


def wants_legacy_task(ctx: ServerRequestContext[Any, Any]) -> bool:
    """A 2025-11-25 task-augmented ``tools/call`` of a run tool."""
    params = ctx.params or {}
    return (
        ctx.method == "tools/call"
        and ctx.protocol_version == LEGACY_TASKS_VERSION
        and params.get("name") in tools.RUN_TOOLS
        and isinstance(params.get("task"), dict)
    )


def _unknown_task(task_id: str) -> MCPError:
    return MCPError(types.INVALID_PARAMS, f"no task {task_id!r} for these credentials")


def _ops_failure(exc: JobOpsError) -> MCPError:
    if exc.kind == "not_found":
        return MCPError(types.INVALID_PARAMS, exc.message)
    return MCPError(types.INTERNAL_ERROR, exc.message)


class DeepExecHandlers:
    """Request handlers of the DeepExec MCP server."""

    def __init__(self, resolve_ops: OpsResolver) -> None:
        self._resolve_ops = resolve_ops

    # --- tools ----------------------------------------------------------------------------------

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        legacy = ctx.protocol_version == LEGACY_TASKS_VERSION
        try:
            offer = await self._resolve_ops(ctx).offer()
        except JobOpsError as exc:
            raise _ops_failure(exc) from exc
        return types.ListToolsResult(tools=tools.tool_definitions(legacy_tasks=legacy, offer=offer))

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> HandlerResult:
        ops = self._resolve_ops(ctx)
        try:
            return await self._call(ctx, ops, params.name, params.arguments)
        except tools.ToolArgumentError as exc:
            return tools.error_result(str(exc))
        except JobOpsError as exc:
            return tools.error_result(f"{exc.kind}: {exc.message}")

    async def _call(
        self,
        ctx: ServerRequestContext[Any, Any],
        ops: JobOps,
        name: str,
        arguments: dict[str, Any] | None,
    ) -> HandlerResult:
        if name in tools.RUN_TOOLS:
            request = tools.run_request(name, arguments)
            job = await ops.submit(request)
            if declares_tasks_extension(ctx):
                return tasks.task_handle(await ops.get(job.job_id))
            return tools.run_result(await self._follow(ctx, ops, job.job_id))
        if name == tools.SUBMIT_JOB:
            summary = await ops.submit(tools.submit_request(arguments))
            return tools.data_result(summary.model_dump(mode="json"))
        if name == tools.GET_JOB:
            args = tools.parse_args(tools.JobIdArgs, arguments)
            return tools.data_result(tools.status_payload(await ops.get(args.job_id)))
        if name == tools.WAIT_JOB:
            wait = tools.parse_args(tools.WaitJobArgs, arguments)
            status = await ops.wait(wait.job_id, wait.timeout_s)
            return tools.data_result(tools.status_payload(status))
        if name == tools.CANCEL_JOB:
            cancel = tools.parse_args(tools.CancelJobArgs, arguments)
            res = await ops.cancel(cancel.job_id, cancel.reason)
            return tools.data_result(res.model_dump(mode="json"))
        if name == tools.LIST_JOBS:
            query = tools.parse_args(tools.ListJobsArgs, arguments)
            page = await ops.list(
                status=tools.list_status(query),
                tags=query.tags,
                name=query.name,
                limit=query.limit,
                cursor=query.cursor,
            )
            return tools.data_result(page.model_dump(mode="json"))
        raise MCPError(types.INVALID_PARAMS, f"unknown tool {name!r}")

    async def _follow(
        self, ctx: ServerRequestContext[Any, Any], ops: JobOps, job_id: str
    ) -> MCPJobStatusResponse:
        """Relay the job's progress to the caller until it ends. If the caller gives up (the
        request is cancelled), the job is cancelled too: nobody is left to read its result."""
        tracker = ProgressTracker()
        try:
            async for event in ops.events(job_id):
                update = tracker.update(event)
                if update is not None:
                    await ctx.session.report_progress(update.progress, TOTAL, update.message)
                if event.type == "status" and event.job is not None and event.job.is_terminal:
                    return event.job
            return await _wait_terminal(ops, job_id)
        except anyio.get_cancelled_exc_class():
            # Shielded: this runs while the handler is being cancelled. JobOpsError: it had
            # just ended.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(10),
                contextlib.suppress(JobOpsError),
            ):
                await ops.cancel(job_id, "the MCP client abandoned the tool call")
            raise

    # --- tasks ----------------------------------------------------------------------------------

    async def _task(
        self, ctx: ServerRequestContext[Any, Any], task_id: str
    ) -> MCPJobStatusResponse:
        try:
            return await self._resolve_ops(ctx).get(task_id)
        except JobOpsError as exc:
            raise _unknown_task(task_id) if exc.kind == "not_found" else _ops_failure(exc) from exc

    async def tasks_get(
        self, ctx: ServerRequestContext[Any, Any], params: tasks.TaskIdParams
    ) -> HandlerResult:
        if ctx.protocol_version == LEGACY_TASKS_VERSION:
            return tasks.legacy_task(await self._task(ctx, params.task_id))
        require_client_extension(ctx, tasks.TASKS_EXTENSION)
        return tasks.task_detail(await self._task(ctx, params.task_id))

    async def tasks_cancel(
        self, ctx: ServerRequestContext[Any, Any], params: tasks.TaskIdParams
    ) -> HandlerResult:
        ops = self._resolve_ops(ctx)
        legacy = ctx.protocol_version == LEGACY_TASKS_VERSION
        if not legacy:
            require_client_extension(ctx, tasks.TASKS_EXTENSION)
        current = await self._task(ctx, params.task_id)
        if current.is_terminal:
            if legacy:  # 2025-11-25: cancelling a terminal task is an error
                raise MCPError(
                    types.INVALID_PARAMS, f"task {params.task_id} already ended ({current.status})"
                )
            return {}  # 2026-07-28: cancellation is cooperative; the ack is all there is
        try:
            await ops.cancel(params.task_id, "cancelled through MCP tasks/cancel")
        except JobOpsError as exc:
            if exc.kind != "conflict":  # conflict: it ended meanwhile, which is fine
                raise _ops_failure(exc) from exc
        if not legacy:
            return {}
        # 2025-11-25 answers with the task, which must already be cancelled.
        try:
            final = await ops.wait(params.task_id, LEGACY_CANCEL_WAIT_SECONDS)
        except JobOpsError as exc:
            raise _ops_failure(exc) from exc
        return tasks.legacy_task(final)

    async def tasks_update(
        self, ctx: ServerRequestContext[Any, Any], params: tasks.TaskIdParams
    ) -> HandlerResult:
        # DeepExec jobs never ask for input; the spec says unknown input is ignored.
        require_client_extension(ctx, tasks.TASKS_EXTENSION)
        await self._task(ctx, params.task_id)
        return {}

    async def tasks_result(
        self, ctx: ServerRequestContext[Any, Any], params: tasks.TaskIdParams
    ) -> HandlerResult:
        await self._task(ctx, params.task_id)
        try:
            final = await _wait_terminal(self._resolve_ops(ctx), params.task_id)
        except JobOpsError as exc:
            raise _ops_failure(exc) from exc
        return tasks.legacy_payload(final)

    async def tasks_list(
        self, ctx: ServerRequestContext[Any, Any], params: tasks.TaskListParams
    ) -> HandlerResult:
        # Scoped to the caller's tenant like every lookup, so listing reveals nothing foreign.
        try:
            page = await self._resolve_ops(ctx).list(
                status=None, tags=[tools.MCP_TAG], name=None, limit=50, cursor=params.cursor
            )
        except JobOpsError as exc:
            raise MCPError(types.INVALID_PARAMS, exc.message) from exc
        result: dict[str, Any] = {"tasks": [tasks.legacy_task(j) for j in page.jobs]}
        if page.next_cursor:
            result["nextCursor"] = page.next_cursor
        return result

    # --- 2025-11-25 tasks -------------------------------------------------------------------------

    async def legacy_tasks(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Middleware for the 2025-11-25 design, which lives in core methods the SDK owns:
        advertise ``capabilities.tasks`` in ``initialize`` and answer a task-augmented
        ``tools/call`` of a run tool with a task. Everything else passes through."""
        if ctx.method == "initialize":
            result = await call_next(ctx)
            if isinstance(result, dict) and result.get("protocolVersion") == LEGACY_TASKS_VERSION:
                caps = result.setdefault("capabilities", {})
                caps["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
            return result
        if not wants_legacy_task(ctx):
            return await call_next(ctx)
        params = ctx.params or {}
        ops = self._resolve_ops(ctx)
        try:
            request = tools.run_request(str(params["name"]), params.get("arguments"))
            job = await ops.submit(request)
            return tasks.legacy_created(await ops.get(job.job_id))
        except tools.ToolArgumentError as exc:
            raise MCPError(types.INVALID_PARAMS, str(exc)) from exc
        except JobOpsError as exc:
            raise MCPError(types.INVALID_PARAMS, f"{exc.kind}: {exc.message}") from exc


async def _wait_terminal(ops: JobOps, job_id: str) -> MCPJobStatusResponse:
    status = await ops.get(job_id)
    while not status.is_terminal:
        status = await ops.wait(job_id, WAIT_SLICE_SECONDS)
    return status


def build_server(resolve_ops: OpsResolver) -> Server[Any]:
    """The DeepExec MCP server (both eras; the tasks extension and 2025-11-25 tasks)."""
    handlers = DeepExecHandlers(resolve_ops)
    server: Server[Any] = Server(
        "deepexec",
        version=__version__,
        title="DeepExec",
        instructions=INSTRUCTIONS,
        on_list_tools=handlers.list_tools,
    )
    server.add_request_handler("tools/call", types.CallToolRequestParams, handlers.call_tool)
    server.add_request_handler("tasks/get", tasks.TaskIdParams, handlers.tasks_get)
    server.add_request_handler("tasks/cancel", tasks.TaskIdParams, handlers.tasks_cancel)
    server.add_request_handler(
        "tasks/update", tasks.TaskIdParams, _only(MODERN_PROTOCOL_VERSIONS, handlers.tasks_update)
    )
    server.add_request_handler(
        "tasks/result", tasks.TaskIdParams, _only((LEGACY_TASKS_VERSION,), handlers.tasks_result)
    )
    server.add_request_handler(
        "tasks/list", tasks.TaskListParams, _only((LEGACY_TASKS_VERSION,), handlers.tasks_list)
    )
    server.extensions[tasks.TASKS_EXTENSION] = {}
    server.middleware.append(handlers.legacy_tasks)
    return server


def _only(versions: tuple[str, ...], handler: TaskHandler[P]) -> TaskHandler[P]:
    """Serve ``handler`` at these protocol versions only; elsewhere the method does not exist
    (2026-07-28 removed ``tasks/result`` and ``tasks/list``; ``tasks/update`` is new)."""

    async def gated(ctx: ServerRequestContext[Any, Any], params: P) -> HandlerResult:
        if ctx.protocol_version not in versions:
            raise MCPError(types.METHOD_NOT_FOUND, "Method not found", ctx.method)
        return await handler(ctx, params)

    return gated
