"""DeepExec as an MCP server, driven by the official ``mcp`` Python client over stdio
(``deepexec mcp``) and Streamable HTTP (``/mcp`` of ``deepexec serve``), against the real server.

The first part checks the pure pieces (tool schemas and results, progress, task mapping); the
rest is end to end: tools, progress notifications, the 2026-07-28 tasks extension (get, poll,
cancel), 2025-11-25 tasks, authentication and tenant scope.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from pydantic import ConfigDict

from deepexec_sdk.job_data import CodeExecutionData, TextGenerationData
from deepexec_sdk.types import JobError, JobStatus, MCPJobEvent, MCPJobStatusResponse
from deepexec_server.mcp import tasks, tools
from deepexec_server.mcp.progress import ProgressTracker, status_message
from tests.conftest import wait_until_no_processes
from tests.serverproc import DEEPEXEC, ServerProcess

# --- pure parts ------------------------------------------------------------------------------


def job(
    status: JobStatus = JobStatus.COMPLETED,
    result: dict[str, Any] | None = None,
    error: JobError | None = None,
    progress: int | None = None,
    message: str | None = None,
) -> MCPJobStatusResponse:
    now = datetime(2026, 8, 1, tzinfo=UTC)
    return MCPJobStatusResponse(
        job_id="job_" + "a" * 32,
        name="t",
        job_type="code_execution",
        status=status,
        progress=progress,
        progress_message=message,
        result=result,
        error=error,
        created_at=now,
        updated_at=now,
    )


OFFER = tools.HostOffer(
    languages=("python", "c", "go"),
    models=("m1",),
    max_timeout=900,
    max_tokens=2048,
    limit_maxima=(("memory_mb", 4096),),
)


def test_every_tool_has_a_description_and_an_object_schema() -> None:
    defs = {t.name: t for t in tools.tool_definitions(legacy_tasks=False, offer=OFFER)}
    assert set(defs) == {
        "execute_code",
        "generate_text",
        "submit_job",
        "get_job",
        "wait_job",
        "cancel_job",
        "list_jobs",
    }
    for tool in defs.values():
        assert tool.description and len(tool.description) > 40
        assert tool.input_schema["type"] == "object"
        assert tool.execution is None
    assert defs["execute_code"].input_schema["required"] == ["code"]
    assert defs["wait_job"].input_schema["required"] == ["job_id"]
    props = defs["execute_code"].input_schema["properties"]
    assert props["compare"]["enum"] == ["exact", "trailing_whitespace", "tokens", "float"]
    assert {"tests", "float_tolerance", "stop_on_failure"} <= set(props)
    case = defs["execute_code"].input_schema["$defs"]["TestCase"]["properties"]
    assert set(case) == {"stdin", "expected_output", "name"}


def test_schemas_carry_the_hosts_languages_models_and_longest_timeout() -> None:
    defs = {t.name: t for t in tools.tool_definitions(legacy_tasks=False, offer=OFFER)}
    execute = defs["execute_code"]
    assert execute.input_schema["properties"]["language"]["enum"] == ["python", "c", "go"]
    assert execute.description is not None and "python, c, go" in execute.description
    assert defs["generate_text"].description is not None
    assert "m1" in defs["generate_text"].description
    for name in ("execute_code", "generate_text", "submit_job"):
        assert defs[name].input_schema["properties"]["timeout"]["maximum"] == 900
    assert defs["generate_text"].input_schema["properties"]["max_tokens"]["maximum"] == 2048
    limits = defs["execute_code"].input_schema["$defs"]["CodeLimits"]["properties"]
    assert limits["memory_mb"]["anyOf"][0]["maximum"] == 4096
    assert "maximum" not in limits["disk_mb"]["anyOf"][0]
    unknown = tools.HostOffer(languages=("python",))
    for tool in tools.tool_definitions(legacy_tasks=False, offer=unknown):
        assert "maximum" not in tool.input_schema["properties"].get("timeout", {})


def test_run_tool_schemas_are_the_sdks_job_data_models() -> None:
    defs = {t.name: t for t in tools.tool_definitions(legacy_tasks=False, offer=OFFER)}
    for name, model in (("execute_code", CodeExecutionData), ("generate_text", TextGenerationData)):
        props = defs[name].input_schema["properties"]
        assert set(props) == {*model.model_fields, "timeout"}
    # The protocol's bound, not the 8192 the tool once declared on its own.
    unknown = tools.HostOffer(languages=("python",))
    text = {t.name: t for t in tools.tool_definitions(legacy_tasks=False, offer=unknown)}
    assert text["generate_text"].input_schema["properties"]["max_tokens"]["maximum"] == 4096
    data = defs["submit_job"].input_schema["properties"]["data"]["description"]
    assert all(field in data for field in (*CodeExecutionData.model_fields, "top_p", "stop"))


def test_legacy_listing_offers_tasks_on_run_tools_only() -> None:
    support = {
        t.name: t.execution.task_support if t.execution else None
        for t in tools.tool_definitions(legacy_tasks=True, offer=OFFER)
    }
    assert support["execute_code"] == support["generate_text"] == "optional"
    assert support["get_job"] is None


def test_execute_code_arguments_become_a_code_job() -> None:
    req = tools.run_request(
        "execute_code", {"code": "print(1)", "language": "bash", "stdin": "x", "timeout": 5}
    )
    assert req.job_type == "code_execution"
    assert req.data == {"code": "print(1)", "language": "bash", "stdin": "x"}
    assert req.timeout == 5
    assert tools.MCP_TAG in req.tags


def test_generate_text_arguments_become_a_text_job_without_unset_fields() -> None:
    req = tools.run_request("generate_text", {"prompt": "hi", "max_tokens": 8, "seed": 1})
    assert req.job_type == "text_generation"
    assert req.data == {"prompt": "hi", "max_tokens": 8, "seed": 1}


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({}, "code"),
        # An unknown language is the server's to refuse (its languages are the host's):
        # test_invalid_arguments_are_an_error_result.
        ({"code": "x", "language": 3}, "language"),
        ({"code": "x", "timeout": 0}, "timeout"),
        ({"code": "x", "shell": True}, "shell"),
    ],
)
def test_bad_arguments_name_the_field(arguments: dict[str, Any], named: str) -> None:
    with pytest.raises(tools.ToolArgumentError, match=named):
        tools.run_request("execute_code", arguments)


def test_submit_job_rejects_a_tag_the_api_would_refuse() -> None:
    with pytest.raises(tools.ToolArgumentError, match="tags"):
        tools.submit_request({"job_type": "code_execution", "data": {}, "tags": ["no spaces"]})


def test_submit_job_carries_a_webhook_url() -> None:
    req = tools.submit_request(
        {"job_type": "code_execution", "data": {"code": "1"}, "webhook_url": "https://h.example/x"}
    )
    assert req.webhook_url == "https://h.example/x"
    assert "webhook_url" in tools.SubmitJobArgs.model_json_schema()["properties"]


def test_failed_run_is_an_error_result_carrying_stderr_and_exit_code() -> None:
    status = job(
        JobStatus.FAILED,
        result={"stdout": "partial\n", "stderr": "Traceback: boom\n", "exit_code": 3},
        error=JobError(type="runtime_error", message="exited with status 3"),
    )
    res = tools.run_result(status)
    assert res.is_error
    text = res.content[0].text  # type: ignore[union-attr]
    assert "partial" in text and "Traceback: boom" in text and "exited with status 3" in text
    assert res.structured_content["exit_code"] == 3
    assert res.structured_content["error"]["type"] == "runtime_error"


def test_completed_text_run_returns_the_text() -> None:
    res = tools.run_result(job(result={"text": "Hello.", "model": "m", "usage": {}}))
    assert not res.is_error
    assert res.content[0].text == "Hello."  # type: ignore[union-attr]
    assert res.structured_content["model"] == "m"


def progress_event(progress: int | None, message: str | None) -> MCPJobEvent:
    return MCPJobEvent(type="progress", job_id="j", progress=progress, message=message)


def status_event(status: JobStatus) -> MCPJobEvent:
    return MCPJobEvent(type="status", job_id="j", job=job(status))


def test_progress_strictly_increases_whatever_the_program_reports() -> None:
    tracker = ProgressTracker()
    events = [
        status_event(JobStatus.PENDING),
        status_event(JobStatus.RUNNING),
        progress_event(30, "step 1"),
        progress_event(30, "step 1"),  # repeat: nothing new to say
        progress_event(30, "step 1b"),  # same percent, news: nudged forward
        progress_event(10, "step 0?"),  # backwards: nudged forward
        progress_event(None, "no percent"),
        progress_event(100, "done"),
        MCPJobEvent(type="output", job_id="j", stream="stdout", text="x"),
        status_event(JobStatus.COMPLETED),
    ]
    updates = [u for u in (tracker.update(e) for e in events) if u is not None]
    values = [u.progress for u in updates]
    assert values == sorted(set(values)), values
    assert len(updates) == 7
    assert updates[0].message == "queued"
    assert updates[2].message == "running: 30% step 1"
    assert values[-1] == 100


def test_status_message_says_where_the_job_is() -> None:
    assert status_message(job(JobStatus.PENDING)) == "queued"
    assert status_message(job(JobStatus.RUNNING, progress=40, message="step 2")) == (
        "running: 40% step 2"
    )
    failed = job(JobStatus.FAILED, error=JobError(type="timeout", message="over 5 s"))
    assert status_message(failed) == "failed: timeout: over 5 s"


@pytest.mark.parametrize(
    ("status", "modern", "legacy"),
    [
        (JobStatus.PENDING, "working", "working"),
        (JobStatus.RUNNING, "working", "working"),
        (JobStatus.COMPLETED, "completed", "completed"),
        (JobStatus.FAILED, "completed", "failed"),  # isError: completed in 2026, failed in 2025
        (JobStatus.CANCELED, "cancelled", "cancelled"),
    ],
)
def test_task_status_in_both_designs(status: JobStatus, modern: str, legacy: str) -> None:
    assert tasks.task_status(status, legacy=False) == modern
    assert tasks.task_status(status, legacy=True) == legacy


def test_modern_handle_is_flat_and_the_detail_carries_the_result() -> None:
    running = job(JobStatus.RUNNING, progress=50, message="half")
    handle = tasks.task_handle(running)
    assert handle["resultType"] == "task"
    assert handle["taskId"] == running.job_id
    assert handle["status"] == "working"
    assert "ttlMs" in handle and handle["pollIntervalMs"] > 0
    assert "result" not in tasks.task_detail(running)
    failed = job(
        JobStatus.FAILED,
        result={"stdout": "", "stderr": "bad\n", "exit_code": 1},
        error=JobError(type="runtime_error", message="exit 1"),
    )
    detail = tasks.task_detail(failed)
    assert detail["status"] == "completed"
    assert detail["result"]["isError"] is True
    assert "bad" in detail["result"]["content"][0]["text"]


def test_legacy_shapes_nest_the_task_and_tag_the_payload() -> None:
    done = job(result={"stdout": "1\n", "stderr": "", "exit_code": 0})
    created = tasks.legacy_created(job(JobStatus.PENDING))
    assert created["task"]["status"] == "working" and "ttl" in created["task"]
    payload = tasks.legacy_payload(done)
    assert payload["_meta"][tasks.RELATED_TASK_META] == {"taskId": done.job_id}
    assert payload["content"][0]["text"] == "1"


# --- a client for the 2026-07-28 tasks extension (what a host would implement) ---------------


class TaskHandle(types.Result):
    """The flat ``CreateTaskResult``."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"]
    task_id: str
    status: str
    status_message: str | None = None
    poll_interval_ms: int | None = None


class DetailedTask(types.Result):
    """A ``tasks/get`` result."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    status_message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class TaskIdParams(types.RequestParams):
    task_id: str


class GetTask(types.Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskIdParams
    name_param = "taskId"


class CancelTask(types.Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskIdParams
    name_param = "taskId"


class TasksClient(ClientExtension):
    """Declares ``io.modelcontextprotocol/tasks``; resolves a task handle by polling."""

    identifier = tasks.TASKS_EXTENSION

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=TaskHandle, resolve=self._poll)]

    async def _poll(self, handle: TaskHandle, ctx: ClaimContext) -> types.CallToolResult:
        with anyio.fail_after(60):
            while True:
                task = await ctx.session.send_request(
                    GetTask(params=TaskIdParams(task_id=handle.task_id)), DetailedTask
                )
                if task.status == "completed" and task.result is not None:
                    return types.CallToolResult.model_validate(task.result)
                if task.status in ("failed", "cancelled"):
                    raise RuntimeError(f"task {task.task_id} {task.status}")
                await anyio.sleep((handle.poll_interval_ms or 500) / 1000)


async def get_task(client: Client, task_id: str) -> DetailedTask:
    return await client.session.send_request(
        GetTask(params=TaskIdParams(task_id=task_id)), DetailedTask
    )


async def cancel_task(client: Client, task_id: str) -> None:
    await client.session.send_request(
        CancelTask(params=TaskIdParams(task_id=task_id)), types.EmptyResult
    )


async def poll(client: Client, task_id: str, until: set[str], timeout: float) -> DetailedTask:
    with anyio.fail_after(timeout):
        while True:
            task = await get_task(client, task_id)
            if task.status in until:
                return task
            await anyio.sleep(0.2)


# --- transports ------------------------------------------------------------------------------

Transport = Literal["stdio", "http"]


@contextlib.asynccontextmanager
async def connect(
    server: ServerProcess,
    transport: Transport,
    *,
    key: str | None = None,
    tasks_extension: bool = False,
) -> AsyncIterator[Client]:
    """A connected official MCP client. stdio launches ``deepexec mcp`` with the server user's
    environment, so it finds its server and key through the credentials file; HTTP sends the
    key as a bearer token."""
    extensions = [TasksClient()] if tasks_extension else None
    if transport == "stdio":
        env = dict(server.env)
        if key is not None:
            env["DEEPEXEC_API_KEY"] = key
        params = StdioServerParameters(command=DEEPEXEC, args=["mcp"], env=env)
        async with Client(params, extensions=extensions, read_timeout_seconds=120) as client:
            yield client
        return
    headers = {"Authorization": f"Bearer {key or server.api_key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as hc,
        Client(
            streamable_http_client(f"{server.base_url}/mcp", http_client=hc),
            extensions=extensions,
            read_timeout_seconds=120,
        ) as client,
    ):
        yield client


TRANSPORTS: list[Transport] = ["stdio", "http"]

PROGRESS_PROGRAM = """
import os, time
fd = int(os.environ["DEEPEXEC_PROGRESS_FD"])
for i in range(1, 4):
    os.write(fd, f"{i * 30} step {i}/3\\n".encode())
    time.sleep(0.3)
print("hello from", "mcp")
"""


def long_program(marker: str) -> str:
    """Reports progress, starts a child ``sleep`` whose command line carries ``marker``, and
    runs for a minute unless stopped."""
    return f"""
import os, subprocess, time
subprocess.Popen(["sleep", "{marker}"])
os.write(int(os.environ["DEEPEXEC_PROGRESS_FD"]), b"5 started\\n")
time.sleep(60)
print("should not finish")
"""


def unique_sleep() -> str:
    return f"{600 + secrets.randbelow(1000)}.{secrets.randbelow(10**6):06d}"


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


# --- tools -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_client_lists_the_tools_with_schemas(
    server: ServerProcess, transport: Transport
) -> None:
    async with connect(server, transport) as client:
        listed = await client.list_tools()
    names = {t.name for t in listed.tools}
    assert {"execute_code", "generate_text", "submit_job", "get_job", "wait_job"} <= names
    assert {"cancel_job", "list_jobs"} <= names
    execute = next(t for t in listed.tools if t.name == "execute_code")
    assert execute.input_schema["properties"]["code"]["type"] == "string"


def rest(server: ServerProcess, path: str) -> Any:
    """The JSON of ``GET path`` on the server's REST API."""
    headers = {"Authorization": f"Bearer {server.api_key}"}
    return httpx.get(f"{server.base_url}{path}", headers=headers, timeout=10).json()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_schemas_carry_the_hosts_token_and_limit_maxima(
    server: ServerProcess, transport: Transport
) -> None:
    models = rest(server, "/v1/models")["models"]
    contexts = [m["context_length"] for m in models if m["available"]]
    maxima = rest(server, "/v1/executors")["code_execution"]["limits"]["max"]
    async with connect(server, transport) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
    tokens = listed["generate_text"].input_schema["properties"]["max_tokens"]["maximum"]
    assert tokens == min(4096, max(contexts, default=4096))
    limits = listed["execute_code"].input_schema["$defs"]["CodeLimits"]["properties"]
    memory = limits["memory_mb"]["anyOf"][0]
    # The stdio server reaches the server through the SDK, which does not read its maxima.
    assert memory.get("maximum") == (maxima["memory_mb"] if transport == "http" else None)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_execute_code_returns_output_and_sends_progress(
    server: ServerProcess, transport: Transport
) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(server, transport) as client:
        result = await client.call_tool(
            "execute_code", {"code": PROGRESS_PROGRAM}, progress_callback=on_progress
        )
    assert not result.is_error, text_of(result)
    assert text_of(result) == "hello from mcp"
    assert result.structured_content is not None
    assert result.structured_content["stdout"] == "hello from mcp\n"
    assert result.structured_content["exit_code"] == 0
    assert result.structured_content["status"] == "COMPLETED"
    messages = [m for _, _, m in seen]
    assert any(m and "step 2/3" in m for m in messages), seen
    values = [p for p, _, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(total == 100 for _, total, _ in seen)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_nonzero_exit_is_an_error_result_with_stderr(
    server: ServerProcess, transport: Transport
) -> None:
    code = "import sys\nprint('to stdout')\nsys.stderr.write('it broke\\n')\nsys.exit(4)"
    async with connect(server, transport) as client:
        result = await client.call_tool("execute_code", {"code": code})
    assert result.is_error
    assert "it broke" in text_of(result)
    assert result.structured_content is not None
    assert result.structured_content["exit_code"] == 4
    assert result.structured_content["stderr"] == "it broke\n"


C_PROGRAM = '#include <stdio.h>\nint main(void) { printf("c says %d\\n", 6 * 7); return 0; }\n'
GO_PROGRAM = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("go says", 6*7) }\n'


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_execute_code_offers_every_host_language_and_runs_c_and_go(
    server: ServerProcess, transport: Transport
) -> None:
    host = [lang["name"] for lang in rest(server, "/v1/languages")["languages"]]
    if not {"c", "go"} <= set(host):
        pytest.skip(f"this host lacks a C or Go toolchain: {host}")
    async with connect(server, transport) as client:
        execute = next(t for t in (await client.list_tools()).tools if t.name == "execute_code")
        assert execute.input_schema["properties"]["language"]["enum"] == host
        c = await client.call_tool("execute_code", {"code": C_PROGRAM, "language": "c"})
        go = await client.call_tool(
            "execute_code", {"code": GO_PROGRAM, "language": "go", "timeout": 120}
        )
    assert not c.is_error, text_of(c)
    assert text_of(c) == "c says 42"
    assert not go.is_error, text_of(go)
    assert text_of(go) == "go says 42"


async def test_the_timeout_maximum_follows_the_servers_setting(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("max-timeout")
    srv = ServerProcess(home, env={"DEEPEXEC_MAX_TIMEOUT": "7200"}).start()
    try:
        async with connect(srv, "http") as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            for name in ("execute_code", "generate_text", "submit_job"):
                assert listed[name].input_schema["properties"]["timeout"]["maximum"] == 7200
            # Over the old fixed maximum of 3600, within the server's.
            long = await client.call_tool("execute_code", {"code": "print(7)", "timeout": 5000})
            too_long = await client.call_tool("execute_code", {"code": "print(7)", "timeout": 7201})
    finally:
        srv.stop()
    assert not long.is_error, text_of(long)
    assert text_of(long) == "7"
    assert too_long.is_error
    assert "7200" in text_of(too_long)


async def test_invalid_arguments_are_an_error_result(server: ServerProcess) -> None:
    async with connect(server, "http") as client:
        result = await client.call_tool("execute_code", {"code": "1", "language": "cobol"})
    assert result.is_error
    assert "language" in text_of(result)


async def test_unknown_tool_is_a_protocol_error(server: ServerProcess) -> None:
    async with connect(server, "http") as client:
        with pytest.raises(MCPError) as err:
            await client.call_tool("rm_rf", {})
    assert err.value.code == types.INVALID_PARAMS


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_job_tools_drive_a_job_across_calls(
    server: ServerProcess, transport: Transport
) -> None:
    name = f"mcp-across-{uuid.uuid4().hex[:8]}"
    async with connect(server, transport) as client:
        submitted = await client.call_tool(
            "submit_job",
            {
                "job_type": "code_execution",
                "data": {"code": "import time; time.sleep(0.5); print(42)"},
                "name": name,
            },
        )
        assert not submitted.is_error, text_of(submitted)
        assert submitted.structured_content is not None
        job_id = submitted.structured_content["job_id"]
        waited = await client.call_tool("wait_job", {"job_id": job_id, "timeout_s": 30})
        assert waited.structured_content is not None
        assert waited.structured_content["status"] == "COMPLETED"
        assert waited.structured_content["result"]["stdout"] == "42\n"
        got = await client.call_tool("get_job", {"job_id": job_id})
        assert got.structured_content == waited.structured_content
        listed = await client.call_tool("list_jobs", {"name": name})
        assert listed.structured_content is not None
        assert [j["job_id"] for j in listed.structured_content["jobs"]] == [job_id]
        late = await client.call_tool("cancel_job", {"job_id": job_id})
        assert late.is_error and "already ended" in text_of(late)
        missing = await client.call_tool("get_job", {"job_id": "job_" + "0" * 32})
        assert missing.is_error and "not_found" in text_of(missing)


# --- tasks extension (2026-07-28) --------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_task_is_returned_at_once_and_polls_to_completed(
    server: ServerProcess, transport: Transport
) -> None:
    async with connect(server, transport, tasks_extension=True) as client:
        assert client.protocol_version == "2026-07-28"
        started = time.monotonic()
        handle = await client.session.call_tool(
            "execute_code", {"code": PROGRESS_PROGRAM}, allow_claimed=True
        )
        assert isinstance(handle, TaskHandle)
        assert time.monotonic() - started < 0.9, "the handle must not wait for the job"
        assert handle.status == "working"
        assert handle.task_id.startswith("job_") and len(handle.task_id) >= 36
        messages: set[str] = set()
        with anyio.fail_after(60):
            while True:
                task = await get_task(client, handle.task_id)
                if task.status_message:
                    messages.add(task.status_message)
                if task.status != "working":
                    break
                await anyio.sleep(0.1)
        assert task.status == "completed"
        assert task.result is not None
        final = types.CallToolResult.model_validate(task.result)
        assert not final.is_error and text_of(final) == "hello from mcp"
        assert any("step" in m for m in messages), messages
        # A host that just calls the tool gets the result, the extension polling for it.
        resolved = await client.call_tool("execute_code", {"code": "print(7)"})
        assert text_of(resolved) == "7"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelling_a_task_cancels_the_job_and_its_processes(
    server: ServerProcess, transport: Transport
) -> None:
    marker = unique_sleep()
    async with connect(server, transport, tasks_extension=True) as client:
        handle = await client.session.call_tool(
            "execute_code", {"code": long_program(marker)}, allow_claimed=True
        )
        assert isinstance(handle, TaskHandle)
        with anyio.fail_after(30):
            while "started" not in ((await get_task(client, handle.task_id)).status_message or ""):
                await anyio.sleep(0.1)
        assert wait_until_no_processes(f"sleep {marker}", timeout=0), "child is not running"
        await cancel_task(client, handle.task_id)
        task = await poll(client, handle.task_id, {"cancelled", "completed", "failed"}, 20)
    assert task.status == "cancelled"
    assert wait_until_no_processes(f"sleep {marker}", timeout=10) == []


async def test_tasks_methods_need_the_extension_declared(server: ServerProcess) -> None:
    async with connect(server, "http") as client:
        with pytest.raises(MCPError) as err:
            await get_task(client, "job_" + "0" * 32)
    assert err.value.code == types.MISSING_REQUIRED_CLIENT_CAPABILITY


async def test_unknown_task_is_invalid_params(server: ServerProcess) -> None:
    async with connect(server, "http", tasks_extension=True) as client:
        with pytest.raises(MCPError) as err:
            await get_task(client, "job_" + "0" * 32)
    assert err.value.code == types.INVALID_PARAMS


# --- authentication and tenants ----------------------------------------------------------------


def test_http_without_a_key_is_401(server: ServerProcess) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in (None, "Bearer dxk_not-a-key", "Basic eDp5"):
        sent = dict(headers, **({"Authorization": auth} if auth else {}))
        r = httpx.post(f"{server.base_url}/mcp", json=body, headers=sent, timeout=10)
        assert r.status_code == 401, (auth, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["type"] in ("authentication_required", "invalid_api_key")


def test_post_to_mcp_is_not_redirected(server: ServerProcess) -> None:
    r = httpx.post(
        f"{server.base_url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            "Authorization": f"Bearer {server.api_key}",
            "Accept": "application/json, text/event-stream",
        },
        timeout=10,
    )
    assert r.status_code not in (301, 302, 307, 308, 401, 404), r.status_code


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_another_tenant_cannot_get_or_cancel_a_task(
    server: ServerProcess, transport: Transport
) -> None:
    other_key = server.new_tenant_key(f"other-{uuid.uuid4().hex[:6]}")
    code = "import time; time.sleep(2); print('mine')"
    async with connect(server, transport, tasks_extension=True) as owner:
        handle = await owner.session.call_tool("execute_code", {"code": code}, allow_claimed=True)
        assert isinstance(handle, TaskHandle)
        async with connect(server, transport, key=other_key, tasks_extension=True) as intruder:
            for attempt in (get_task, cancel_task):
                with pytest.raises(MCPError) as err:
                    await attempt(intruder, handle.task_id)
                assert err.value.code == types.INVALID_PARAMS
            jobs = await intruder.call_tool("get_job", {"job_id": handle.task_id})
            assert jobs.is_error
        task = await poll(owner, handle.task_id, {"completed", "cancelled", "failed"}, 30)
    assert task.status == "completed"
    assert task.result is not None
    assert text_of(types.CallToolResult.model_validate(task.result)) == "mine"


# --- 2025-11-25 tasks (raw JSON-RPC, as an older client sends it) -------------------------------


class LegacySession:
    """A minimal 2025-11-25 Streamable HTTP client: initialize, then requests in a session."""

    def __init__(self, server: ServerProcess) -> None:
        self.http = httpx.Client(
            base_url=server.base_url,
            headers={
                "Authorization": f"Bearer {server.api_key}",
                "Accept": "application/json, text/event-stream",
            },
            timeout=30,
        )
        self.ids = 0

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        r = self.http.post(
            "/mcp", json={"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params}
        )
        r.raise_for_status()
        if sid := r.headers.get("mcp-session-id"):
            self.http.headers["Mcp-Session-Id"] = sid
        self.http.headers["MCP-Protocol-Version"] = "2025-11-25"
        payloads = [
            json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")
        ] or [r.json()]
        message: dict[str, Any] = next(p for p in payloads if p.get("id") == self.ids)
        return message

    def initialize(self) -> dict[str, Any]:
        answer = self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "legacy-test", "version": "0"},
            },
        )
        self.http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def close(self) -> None:
        self.http.close()


def test_legacy_tasks_create_poll_and_fetch_the_result(server: ServerProcess) -> None:
    session = LegacySession(server)
    try:
        init = session.initialize()["result"]
        assert init["protocolVersion"] == "2025-11-25"
        assert init["capabilities"]["tasks"]["requests"]["tools"]["call"] == {}
        listed = session.request("tools/list", {})["result"]["tools"]
        execute = next(t for t in listed if t["name"] == "execute_code")
        assert execute["execution"]["taskSupport"] == "optional"
        created = session.request(
            "tools/call",
            {"name": "execute_code", "arguments": {"code": "print('legacy')"}, "task": {}},
        )["result"]
        task_id = created["task"]["taskId"]
        assert created["task"]["status"] == "working"
        payload = session.request("tasks/result", {"taskId": task_id})["result"]
        assert payload["content"][0]["text"] == "legacy"
        assert payload["_meta"][tasks.RELATED_TASK_META] == {"taskId": task_id}
        got = session.request("tasks/get", {"taskId": task_id})["result"]
        assert got["status"] == "completed"
        listed_tasks = session.request("tasks/list", {})["result"]["tasks"]
        assert task_id in {t["taskId"] for t in listed_tasks}
        ended = session.request("tasks/cancel", {"taskId": task_id})
        assert ended["error"]["code"] == types.INVALID_PARAMS
    finally:
        session.close()


def test_legacy_task_cancel_answers_cancelled(server: ServerProcess) -> None:
    marker = unique_sleep()
    session = LegacySession(server)
    try:
        session.initialize()
        created = session.request(
            "tools/call",
            {"name": "execute_code", "arguments": {"code": long_program(marker)}, "task": {}},
        )["result"]
        task_id = created["task"]["taskId"]
        deadline = time.monotonic() + 30
        while "started" not in (
            session.request("tasks/get", {"taskId": task_id})["result"].get("statusMessage") or ""
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cancelled = session.request("tasks/cancel", {"taskId": task_id})["result"]
        assert cancelled["status"] == "cancelled"
    finally:
        session.close()
    assert wait_until_no_processes(f"sleep {marker}", timeout=10) == []
