"""The clients against a real HTTP server on a loopback port (a scripted stdlib server standing
in for a DeepExec server that is restarting, or whose connection drops)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from deepexec_sdk import DeepExecAsyncClient, DeepExecClient, MCPJobEvent, MCPJobResponse
from tests.sdk.conftest import (
    KEY,
    ScriptedServer,
    envelope,
    job_json,
    reply_json,
    reply_stream,
    sse,
    summary_json,
)


def submit(kind: str, url: str) -> MCPJobResponse:
    args: tuple[Any, ...] = ("real", "code_execution", {"code": "print(1)"})
    if kind == "sync":
        with DeepExecClient(url, KEY, max_retries=3) as c:
            return c.submit_mcp_job(*args)

    async def main() -> MCPJobResponse:
        async with DeepExecAsyncClient(url, KEY, max_retries=3) as c:
            return await c.submit_mcp_job(*args)

    return asyncio.run(main())


def events(kind: str, url: str) -> list[MCPJobEvent]:
    if kind == "sync":
        with DeepExecClient(url, KEY, max_retries=3) as c:
            return list(c.stream_mcp_job_events("job_1"))

    async def main() -> list[MCPJobEvent]:
        async with DeepExecAsyncClient(url, KEY, max_retries=3) as c:
            return [e async for e in c.stream_mcp_job_events("job_1")]

    return asyncio.run(main())


def test_submit_waits_out_retry_after_and_sends_one_idempotency_key(kind: str) -> None:
    unavailable = envelope("not_ready", "the server is starting")
    replies = [
        reply_json(503, unavailable, {"Retry-After": "1"}),
        reply_json(503, unavailable, {"Retry-After": "1"}),
        reply_json(201, summary_json("job_42")),
    ]
    with ScriptedServer(replies) as srv:
        t0 = time.monotonic()
        job = submit(kind, srv.url)
        elapsed = time.monotonic() - t0
    assert job.job_id == "job_42"
    assert len(srv.received) == 3
    keys = {headers["Idempotency-Key"] for _, _, headers, _ in srv.received}
    assert len(keys) == 1
    # Jittered backoff alone would sleep < 1.5 s in total; Retry-After asked for 2 s.
    assert 2.0 <= elapsed < 10
    bodies = {body for _, _, _, body in srv.received}
    assert len(bodies) == 1 and json.loads(bodies.pop())["name"] == "real"
    for method, path, headers, _ in srv.received:
        assert (method, path) == ("POST", "/v1/jobs")
        assert headers["Authorization"] == f"Bearer {KEY}"
        assert headers["DeepExec-Protocol"] == "1"
        assert headers["User-Agent"].startswith("deepexec-sdk/")


def test_event_stream_survives_a_dropped_connection(kind: str) -> None:
    first = [
        b": keep-alive\r\n\r\n",
        sse("status", job_json("RUNNING")).replace(b"\n", b"\r\n"),
        b"event: output\ndata: ",
        b'{"stream": "stdout", "text": "one\\n"}\n\n',
        b'event: output\ndata: {"stream": ',  # the connection drops mid-event
    ]
    second = [
        sse("status", job_json("RUNNING")),
        sse("output", {"stream": "stdout", "text": "two\n"}),
        sse("progress", {"progress": 50, "message": "half"}),
        sse("status", job_json("COMPLETED", result={"stdout": "one\ntwo\n"})),
    ]
    with ScriptedServer([reply_stream(first), reply_stream(second)]) as srv:
        got = events(kind, srv.url)
    assert [e.type for e in got] == ["status", "output", "status", "output", "progress", "status"]
    assert [e.text for e in got if e.type == "output"] == ["one\n", "two\n"]
    assert got[-1].job is not None and got[-1].job.status == "COMPLETED"
    assert [path for _, path, _, _ in srv.received] == ["/v1/jobs/job_1/events"] * 2
