"""The clients' I/O loops (retries, waiting, event streams) driven through httpx's
``MockTransport``, the HTTP seam, for both the sync and the async client."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from deepexec_sdk import (
    DeepExecAsyncClient,
    DeepExecClient,
    DeepExecError,
    JobWaitTimeoutError,
    MCPAuthenticationError,
    MCPConflictError,
    MCPConnectionError,
    MCPJobNotFoundError,
    MCPProtocolError,
    MCPRateLimitError,
    MCPServerError,
    MCPTimeoutError,
)
from tests.sdk.conftest import (
    KEY,
    PROTO,
    Chunks,
    envelope,
    job_json,
    run_client,
    sse,
    summary_json,
)

SUBMIT = ("submit_mcp_job", "n", "code_execution", {"code": "print(1)"})


class Script:
    """Answers requests from a list (the last answer repeats), recording each request. A
    callable answer makes a fresh response each time (stream bodies can be read once)."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer


def ok(status: int, body: Any, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=body, headers={**PROTO, **headers})


def busy(status: int = 503) -> httpx.Response:
    return ok(status, envelope("not_ready", "starting up"), **{"Retry-After": "0"})


# --- retries ----------------------------------------------------------------------------------


def test_retryable_statuses_are_retried_with_the_same_idempotency_key(kind: str) -> None:
    script = Script(busy(503), busy(502), busy(429), ok(201, summary_json()))
    job = run_client(kind, script, *SUBMIT)
    assert job.job_id == "job_1"
    keys = {r.headers["Idempotency-Key"] for r in script.requests}
    assert len(script.requests) == 4 and len(keys) == 1
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in script.requests)


def test_each_submit_call_gets_its_own_key(kind: str) -> None:
    script = Script(ok(201, summary_json()))
    run_client(kind, script, *SUBMIT)
    run_client(kind, script, *SUBMIT)
    run_client(kind, script, *SUBMIT, idempotency_key="mine")
    keys = [r.headers["Idempotency-Key"] for r in script.requests]
    assert keys[0] != keys[1] and keys[2] == "mine"


@pytest.mark.parametrize(
    ("status", "error_type", "exc"),
    [
        (409, "job_not_cancelable", MCPConflictError),
        (500, "internal_error", MCPServerError),
        (404, "job_not_found", MCPJobNotFoundError),
        (401, "invalid_api_key", MCPAuthenticationError),
    ],
)
def test_non_retryable_errors_fail_at_once(
    kind: str, status: int, error_type: str, exc: type[DeepExecError]
) -> None:
    script = Script(ok(status, envelope(error_type, "refused", "req_7")))
    with pytest.raises(exc) as info:
        run_client(kind, script, "cancel_mcp_job", "job_1")
    assert len(script.requests) == 1
    assert info.value.error_type == error_type and info.value.request_id == "req_7"


@pytest.mark.parametrize(("status", "exc"), [(503, MCPServerError), (429, MCPRateLimitError)])
def test_retries_run_out_into_the_mapped_error(
    kind: str, status: int, exc: type[DeepExecError]
) -> None:
    script = Script(busy(status))
    with pytest.raises(exc) as info:
        run_client(kind, script, "get_mcp_job_status", "job_1", max_retries=2)
    assert len(script.requests) == 3 and info.value.status_code == status


def test_connection_errors_are_retried_then_succeed(kind: str) -> None:
    script = Script(
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        ok(200, job_json("COMPLETED")),
    )
    status = run_client(kind, script, "get_mcp_job_status", "job_1", max_retries=2)
    assert status.status == "COMPLETED" and len(script.requests) == 3


def test_timeouts_end_as_mcp_timeout_error_from_the_httpx_error(kind: str) -> None:
    script = Script(httpx.ReadTimeout("timed out"))
    with pytest.raises(MCPTimeoutError) as info:
        run_client(kind, script, "get_mcp_job_status", "job_1", max_retries=1)
    assert len(script.requests) == 2
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_max_retries_zero_sends_once(kind: str) -> None:
    script = Script(busy(503))
    with pytest.raises(MCPServerError):
        run_client(kind, script, "get_mcp_job_status", "job_1", max_retries=0)
    assert len(script.requests) == 1


def get_status_at(kind: str, url: str) -> None:
    if kind == "sync":
        with DeepExecClient(url, KEY, max_retries=1) as c:
            c.get_mcp_job_status("job_1")
        return

    async def main() -> None:
        async with DeepExecAsyncClient(url, KEY, max_retries=1) as c:
            await c.get_mcp_job_status("job_1")

    asyncio.run(main())


def test_refused_port_is_a_connection_error_naming_the_server(kind: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(MCPConnectionError) as info:
        get_status_at(kind, url)
    assert url in str(info.value) and "deepexec serve" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_retries_are_logged_without_the_api_key(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="deepexec_sdk")
    with pytest.raises(MCPServerError):
        run_client(kind, Script(busy(503)), "get_mcp_job_status", "job_1", max_retries=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "deepexec_sdk"]
    assert any("retry 1/1" in m for m in messages)
    assert any(r.levelno == logging.WARNING for r in caplog.records if r.name == "deepexec_sdk")
    assert all(KEY not in m for m in messages)


# --- answers that are not DeepExec's ----------------------------------------------------------


def test_success_without_protocol_header_is_a_protocol_error(kind: str) -> None:
    script = Script(httpx.Response(200, json=job_json()))
    with pytest.raises(MCPProtocolError, match="did not identify as DeepExec"):
        run_client(kind, script, "get_mcp_job_status", "job_1")


def test_success_body_that_does_not_fit_the_model_is_a_protocol_error(kind: str) -> None:
    script = Script(ok(200, {"job_id": "job_1", "status": "SOMETHING"}))
    with pytest.raises(MCPProtocolError, match="MCPJobStatusResponse") as info:
        run_client(kind, script, "get_mcp_job_status", "job_1")
    assert info.value.__cause__ is not None


def test_without_a_key_no_authorization_is_sent_and_401_says_how_to_configure(
    kind: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEEPEXEC_API_KEY", raising=False)
    monkeypatch.setenv("DEEPEXEC_CREDENTIALS_FILE", str(tmp_path / "none.json"))
    script = Script(ok(401, envelope("authentication_required", "an API key is required")))
    with pytest.raises(MCPAuthenticationError) as info:
        run_client(kind, script, "get_mcp_job_status", "job_1", api_key=None)
    assert "authorization" not in script.requests[0].headers
    message = str(info.value)
    assert "api_key=" in message and "DEEPEXEC_API_KEY" in message
    assert "deepexec serve" in message and str(tmp_path / "none.json") in message


# --- waiting ----------------------------------------------------------------------------------


def test_wait_returns_the_terminal_status_using_long_polls(kind: str) -> None:
    script = Script(
        ok(200, job_json("PENDING")), ok(200, job_json("RUNNING")), ok(200, job_json("FAILED"))
    )
    t0 = time.monotonic()
    final = run_client(kind, script, "wait_for_mcp_job_completion", "job_1", poll_interval=0.05)
    assert final.status == "FAILED"
    assert [r.url.params.get("wait") for r in script.requests] == ["0.05"] * 3
    # the fake server answered at once, so the client paced itself by poll_interval
    assert time.monotonic() - t0 >= 0.09


def test_wait_gives_up_after_max_wait_time_with_the_last_status(kind: str) -> None:
    script = Script(ok(200, job_json("RUNNING")))
    t0 = time.monotonic()
    with pytest.raises(JobWaitTimeoutError) as info:
        run_client(
            kind,
            script,
            "wait_for_mcp_job_completion",
            "job_1",
            poll_interval=0.1,
            max_wait_time=0.35,
        )
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 2.0
    assert isinstance(info.value, TimeoutError)
    assert info.value.last_status.status == "RUNNING"
    waits = [float(r.url.params.get("wait", "0")) for r in script.requests]
    assert 3 <= len(waits) <= 6 and all(w <= 0.1 for w in waits)


def test_wait_with_zero_max_wait_looks_once(kind: str) -> None:
    script = Script(ok(200, job_json("RUNNING")))
    with pytest.raises(JobWaitTimeoutError):
        run_client(kind, script, "wait_for_mcp_job_completion", "job_1", max_wait_time=0)
    assert len(script.requests) == 1 and "wait" not in script.requests[0].url.params


@pytest.mark.parametrize("kwargs", [{"poll_interval": 0}, {"max_wait_time": -1}])
def test_wait_refuses_bad_arguments_before_any_request(kind: str, kwargs: dict[str, Any]) -> None:
    script = Script(ok(200, job_json("RUNNING")))
    with pytest.raises(ValueError, match=r"poll_interval|max_wait_time"):
        run_client(kind, script, "wait_for_mcp_job_completion", "job_1", **kwargs)
    assert script.requests == []


def test_execute_code_and_wait_submits_then_waits_without_raising_on_failure(kind: str) -> None:
    failed = job_json("FAILED", error={"type": "runtime_error", "message": "exit 1"})
    script = Script(ok(201, summary_json()), ok(200, failed))
    final = run_client(kind, script, "execute_code_and_wait", "exit(1)", stdin="x", tags=["t1"])
    assert final.status == "FAILED" and final.error.type == "runtime_error"
    body = json.loads(script.requests[0].content)
    assert body["job_type"] == "code_execution" and body["tags"] == ["t1"]
    assert body["data"] == {"code": "exit(1)", "language": "python", "stdin": "x"}
    assert script.requests[1].url.path == "/v1/jobs/job_1"


def test_generate_text_and_wait_sends_only_the_given_options(kind: str) -> None:
    done = job_json("COMPLETED", job_type="text_generation", result={"text": "hello"})
    script = Script(ok(201, summary_json()), ok(200, done))
    final = run_client(kind, script, "generate_text_and_wait", "Say hi", max_tokens=8, seed=3)
    assert final.result == {"text": "hello"}
    body = json.loads(script.requests[0].content)
    assert body["job_type"] == "text_generation"
    assert body["data"] == {"prompt": "Say hi", "max_tokens": 8, "seed": 3}


# --- event streams ----------------------------------------------------------------------------


def stream(*chunks: bytes | Exception, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status,
        headers={**PROTO, "Content-Type": "text/event-stream"},
        stream=Chunks(list(chunks)),
    )


def test_stream_reconnects_after_an_early_close_and_ends_at_the_terminal_status(
    kind: str,
) -> None:
    script = Script(
        stream(
            sse("status", job_json("RUNNING")), sse("output", {"stream": "stdout", "text": "a"})
        ),
        stream(
            b": keep-alive\n\n",
            sse("status", job_json("RUNNING")),
            sse("output", {"stream": "stdout", "text": "b"}),
            sse("status", job_json("COMPLETED")),
            RuntimeError("the client read past the terminal status"),
        ),
    )
    events = run_client(kind, script, "stream_mcp_job_events", "job_1")
    assert [e.type for e in events] == ["status", "output", "status", "output", "status"]
    assert "".join(e.text for e in events if e.type == "output") == "ab"
    assert events[-1].job.status == "COMPLETED"
    assert len(script.requests) == 2


def test_stream_reconnects_after_a_broken_connection(kind: str) -> None:
    script = Script(
        stream(sse("status", job_json("RUNNING"))[:20], httpx.ReadError("connection reset")),
        stream(sse("status", job_json("CANCELED"))),
    )
    events = run_client(kind, script, "stream_mcp_job_events", "job_1")
    assert [e.job.status for e in events] == ["CANCELED"]


def test_stream_gives_up_after_repeated_drops(kind: str) -> None:
    script = Script(lambda: stream(sse("status", job_json("RUNNING"))))
    with pytest.raises(MCPConnectionError, match="before the job ended"):
        run_client(kind, script, "stream_mcp_job_events", "job_1", max_retries=1)
    assert len(script.requests) == 2


def test_stream_of_unknown_job_is_not_found(kind: str) -> None:
    script = Script(ok(404, envelope("job_not_found", "no job job_x")))
    with pytest.raises(MCPJobNotFoundError):
        run_client(kind, script, "stream_mcp_job_events", "job_x")
    assert script.requests[0].headers["accept"] == "text/event-stream"


def test_stream_opening_is_retried_like_any_request(kind: str) -> None:
    script = Script(busy(503), stream(sse("status", job_json("COMPLETED"))))
    events = run_client(kind, script, "stream_mcp_job_events", "job_1")
    assert len(events) == 1 and len(script.requests) == 2
