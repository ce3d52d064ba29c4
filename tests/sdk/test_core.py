"""The SDK's pure core: error mapping, retry decisions, backoff, Retry-After, request building,
wait pacing and configuration precedence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from deepexec_sdk import (
    DeepExecClient,
    DeepExecError,
    JobWaitTimeoutError,
    MCPAuthenticationError,
    MCPConflictError,
    MCPConnectionError,
    MCPExecutionError,
    MCPJobNotFoundError,
    MCPJobStatusResponse,
    MCPProtocolError,
    MCPRateLimitError,
    MCPServerError,
    MCPTimeoutError,
    MCPValidationError,
    __version__,
)
from deepexec_sdk._answers import error_from_response, should_retry, transport_error
from deepexec_sdk._follow import WaitClock
from deepexec_sdk._requests import code_execution_data, text_generation_data
from deepexec_sdk.config import resolve
from deepexec_sdk.retry import RetryPolicy
from tests.sdk.conftest import BASE, KEY, envelope, job_json

URL = f"{BASE}/v1/jobs/job_1"
POLICY = RetryPolicy(max_retries=3)


def response(
    status: int,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    raw: bytes | None = None,
) -> httpx.Response:
    hdrs = {"DeepExec-Protocol": "1", **(headers or {})}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.Response(status, headers=hdrs, content=content, request=httpx.Request("GET", URL))


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, MCPValidationError),
        (401, MCPAuthenticationError),
        (403, MCPAuthenticationError),
        (404, MCPJobNotFoundError),
        (405, MCPExecutionError),
        (409, MCPConflictError),
        (413, MCPValidationError),
        (415, MCPValidationError),
        (422, MCPValidationError),
        (429, MCPRateLimitError),
        (500, MCPServerError),
        (503, MCPServerError),
    ],
)
def test_status_maps_to_exception_with_the_envelope_fields(
    status: int, cls: type[DeepExecError]
) -> None:
    details = [{"loc": ["data", "language"], "msg": "unknown"}]
    err = error_from_response(
        response(status, envelope("some_type", "what went wrong", "req_9", details)), BASE
    )
    assert type(err) is cls
    assert (err.status_code, err.error_type, err.request_id, err.details) == (
        status,
        "some_type",
        "req_9",
        details,
    )
    assert err.message == "what went wrong"
    assert "what went wrong" in str(err) and f"HTTP {status}" in str(err) and "req_9" in str(err)


def test_conflict_is_an_execution_error() -> None:
    assert issubclass(MCPConflictError, MCPExecutionError)
    assert issubclass(JobWaitTimeoutError, TimeoutError)


def test_request_id_falls_back_to_the_header() -> None:
    body = {"error": {"type": "t", "message": "m", "details": None, "request_id": None}}
    err = error_from_response(response(404, body, {"X-Request-Id": "req_hdr"}), BASE)
    assert err.request_id == "req_hdr"


def test_auth_hint_is_appended_to_authentication_errors_only() -> None:
    hint = "set DEEPEXEC_API_KEY"
    assert hint in str(error_from_response(response(401, envelope("x", "no key")), BASE, hint))
    assert hint not in str(error_from_response(response(404, envelope("x", "nope")), BASE, hint))


def test_answer_without_protocol_header_is_not_deepexec() -> None:
    r = httpx.Response(404, text="<html>nginx</html>", request=httpx.Request("GET", URL))
    err = error_from_response(r, BASE)
    assert isinstance(err, MCPProtocolError)
    assert "did not identify as DeepExec" in err.message and BASE in err.message
    assert "base_url" in err.message


def test_gateway_error_without_protocol_header_is_a_server_error() -> None:
    r = httpx.Response(502, text="Bad Gateway", request=httpx.Request("GET", URL))
    err = error_from_response(r, BASE)
    assert isinstance(err, MCPServerError) and err.status_code == 502
    assert "proxy" in err.message


@pytest.mark.parametrize("version", ["2", "0", "2.1"])
def test_other_protocol_major_is_a_protocol_error(version: str) -> None:
    r = response(404, envelope("job_not_found", "x"), {"DeepExec-Protocol": version})
    err = error_from_response(r, BASE)
    assert isinstance(err, MCPProtocolError) and repr(version) in err.message


def test_error_body_that_is_not_the_envelope_is_a_protocol_error() -> None:
    err = error_from_response(response(400, raw=b'{"detail": "nope"}'), BASE)
    assert isinstance(err, MCPProtocolError) and "envelope" in err.message


def test_redirect_is_a_protocol_error() -> None:
    err = error_from_response(response(301, raw=b"", headers={"Location": "/elsewhere"}), BASE)
    assert isinstance(err, MCPProtocolError) and "/elsewhere" in err.message


def test_transport_errors_are_translated() -> None:
    timeout = transport_error(httpx.ReadTimeout("slow"), "GET", URL)
    assert isinstance(timeout, MCPTimeoutError) and "GET" in timeout.message
    refused = transport_error(httpx.ConnectError("refused"), "POST", URL)
    assert isinstance(refused, MCPConnectionError)
    assert BASE in refused.message and "deepexec serve" in refused.message


# --- retry policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retried"),
    [(408, True), (429, True), (502, True), (503, True), (504, True)]
    + [(s, False) for s in (200, 201, 400, 401, 403, 404, 409, 413, 422, 500, 501)],
)
def test_retry_decision_by_status(status: int, retried: bool) -> None:
    assert should_retry(0, POLICY, status_code=status) is retried


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (httpx.ConnectError("x"), True),
        (httpx.ReadError("x"), True),
        (httpx.ConnectTimeout("x"), True),
        (httpx.ReadTimeout("x"), True),
        (httpx.RemoteProtocolError("server disconnected"), True),
        (httpx.UnsupportedProtocol("ftp"), False),
        (httpx.LocalProtocolError("x"), False),
    ],
)
def test_retry_decision_by_transport_error(error: httpx.TransportError, retried: bool) -> None:
    assert should_retry(0, POLICY, error=error) is retried


def test_no_retry_once_max_retries_are_spent() -> None:
    assert should_retry(2, POLICY, status_code=503)
    assert not should_retry(3, POLICY, status_code=503)
    assert not should_retry(0, RetryPolicy(max_retries=0), error=httpx.ConnectError("x"))


# --- request building -------------------------------------------------------------------------


@pytest.fixture
def client() -> Any:
    with DeepExecClient(BASE, KEY) as c:
        yield c


def test_submit_request_carries_auth_protocol_agent_and_a_fresh_idempotency_key(
    client: DeepExecClient,
) -> None:
    first = client._submit_call("n", "code_execution", {"code": "1"}, 60, 0, None, None).spec
    second = client._submit_call("n", "code_execution", {"code": "1"}, 60, 0, None, None).spec
    assert (first.method, first.url) == ("POST", f"{BASE}/v1/jobs")
    assert first.headers["Authorization"] == f"Bearer {KEY}"
    assert first.headers["DeepExec-Protocol"] == "1"
    assert first.headers["User-Agent"] == f"deepexec-sdk/{__version__}"
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
    assert 0 < len(first.headers["Idempotency-Key"]) <= 200
    assert first.json == {
        "name": "n",
        "job_type": "code_execution",
        "data": {"code": "1"},
        "timeout": 60,
        "priority": 0,
        "tags": [],
    }


def test_callers_idempotency_key_is_used_as_given(client: DeepExecClient) -> None:
    spec = client._submit_call("n", "t", {}, 60, 0, ["a"], "my-key-1").spec
    assert spec.headers["Idempotency-Key"] == "my-key-1"


def test_the_api_key_never_shows_in_reprs(client: DeepExecClient) -> None:
    spec = client._status_call("job_1").spec
    assert KEY not in repr(spec) and KEY not in repr(client)


def test_job_ids_are_quoted_into_the_path(client: DeepExecClient) -> None:
    assert client._status_call("a/b?c").spec.url == f"{BASE}/v1/jobs/a%2Fb%3Fc"
    assert client._cancel_call("j 1", None).spec.url == f"{BASE}/v1/jobs/j%201/cancel"
    with pytest.raises(ValueError, match="job_id"):
        client._status_call("")


def test_long_poll_asks_for_wait_and_reads_longer_than_it(client: DeepExecClient) -> None:
    plain = client._status_call("job_1").spec
    assert list(plain.params) == []
    polled = client._status_call("job_1", wait=12.5).spec
    assert list(polled.params) == [("wait", "12.5")]
    assert polled.timeout.read is not None and polled.timeout.read > 12.5


def test_list_sends_each_tag_as_its_own_param(client: DeepExecClient) -> None:
    spec = client._list_call("COMPLETED", ["a", "b"], "nm", 10, "cur").spec
    assert list(spec.params) == [
        ("status", "COMPLETED"),
        ("tag", "a"),
        ("tag", "b"),
        ("name", "nm"),
        ("limit", "10"),
        ("cursor", "cur"),
    ]
    assert list(client._list_call(None, None, None, 50, None).spec.params) == [("limit", "50")]


def test_cancel_body_has_the_reason_only_when_given(client: DeepExecClient) -> None:
    assert client._cancel_call("j", None).spec.json == {}
    assert client._cancel_call("j", "stop").spec.json == {"reason": "stop"}


def test_event_stream_read_timeout_outlasts_the_keepalives(client: DeepExecClient) -> None:
    spec = client._event_stream("job_1").spec
    assert spec.url == f"{BASE}/v1/jobs/job_1/events" and spec.stream
    # keep-alives come every 15 s; 60 s of silence is a half-open connection
    assert spec.timeout.read == 60.0 and spec.timeout.connect == 30.0
    assert spec.headers["Accept"] == "text/event-stream"


def test_job_data_omits_what_was_not_given() -> None:
    assert code_execution_data(
        "print(1)", "python", stdin=None, args=None, files=None, env=None
    ) == {"code": "print(1)", "language": "python"}
    assert code_execution_data(
        "x", "bash", stdin="in", args=("a",), files=None, env={"A": "1"}
    ) == {
        "code": "x",
        "language": "bash",
        "stdin": "in",
        "args": ["a"],
        "env": {"A": "1"},
    }
    assert text_generation_data(
        "hi", None, 256, temperature=None, top_p=None, stop=None, seed=None, system=None
    ) == {"prompt": "hi", "max_tokens": 256}
    assert text_generation_data(
        "hi", "m", 5, temperature=0.0, top_p=None, stop=("\n",), seed=1, system="s"
    ) == {
        "prompt": "hi",
        "model": "m",
        "max_tokens": 5,
        "temperature": 0.0,
        "stop": ["\n"],
        "seed": 1,
        "system": "s",
    }


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": "not a url"}, "base_url"),
    ],
)
def test_bad_client_arguments_are_refused(kwargs: dict[str, Any], named: str) -> None:
    kwargs = {"base_url": BASE, "api_key": KEY, **kwargs}
    with pytest.raises(ValueError, match=named):
        DeepExecClient(**kwargs)


# --- wait pacing ------------------------------------------------------------------------------


def test_long_poll_is_poll_interval_capped_by_the_server_limit_and_the_deadline() -> None:
    assert WaitClock(1.0, None, started=100).long_poll(now=500) == 1.0
    assert WaitClock(300.0, None, started=100).long_poll(now=100) == 60.0
    clock = WaitClock(2.0, 5.0, started=100)
    assert clock.long_poll(now=100) == 2.0
    assert clock.long_poll(now=104) == pytest.approx(1.0)
    assert clock.long_poll(now=106) == 0.0


def test_deadline_and_pauses() -> None:
    clock = WaitClock(1.0, 3.0, started=0)
    assert not clock.expired(now=2.9) and clock.expired(now=3.0)
    # a full long-poll: ask again at once
    assert clock.pause(sent=0.0, now=1.0) == 0.0
    # the server answered at once without the job ending: wait out the interval
    assert clock.pause(sent=0.0, now=0.1) == pytest.approx(0.9)
    # never past the deadline
    assert clock.pause(sent=2.5, now=2.6) == pytest.approx(0.4)
    assert WaitClock(1.0, None, started=0).pause(sent=10.0, now=10.25) == pytest.approx(0.75)


def test_wait_timeout_error_carries_the_last_status() -> None:
    last = MCPJobStatusResponse.model_validate(job_json("RUNNING"))
    err = WaitClock(1.0, 2.0, started=0).timeout_error("job_1", last)
    assert isinstance(err, TimeoutError) and err.last_status is last and err.job_id == "job_1"
    assert "RUNNING" in str(err)


@pytest.mark.parametrize(
    ("poll_interval", "max_wait_time"),
    [
        (0, None),
        (-1, None),
        (float("nan"), None),
        (float("inf"), None),
        (1, -0.1),
        (1, float("nan")),
    ],
)
def test_bad_wait_arguments_are_value_errors(
    poll_interval: float, max_wait_time: float | None
) -> None:
    with pytest.raises(ValueError, match=r"poll_interval|max_wait_time"):
        WaitClock(poll_interval, max_wait_time, started=0)


# --- configuration precedence -----------------------------------------------------------------


def write_creds(path: Path, base_url: str, api_key: str) -> Path:
    path.write_text(json.dumps({"base_url": base_url, "api_key": api_key}))
    path.chmod(0o600)
    return path


def test_arguments_beat_environment_beat_credentials_file(tmp_path: Path) -> None:
    creds = write_creds(tmp_path / "c.json", "http://file:1", "dxk_file")
    env = {"DEEPEXEC_CREDENTIALS_FILE": str(creds)}
    assert (resolve(None, None, env).base_url, resolve(None, None, env).api_key) == (
        "http://file:1",
        "dxk_file",
    )
    env |= {"DEEPEXEC_BASE_URL": "http://env:2/", "DEEPEXEC_API_KEY": "dxk_env"}
    from_env = resolve(None, None, env)
    assert (from_env.base_url, from_env.api_key) == ("http://env:2", "dxk_env")
    from_args = resolve("http://arg:3", "dxk_arg", env)
    assert (from_args.base_url, from_args.api_key) == ("http://arg:3", "dxk_arg")
    mixed = resolve("http://arg:3", None, {"DEEPEXEC_CREDENTIALS_FILE": str(creds)})
    assert (mixed.base_url, mixed.api_key) == ("http://arg:3", "dxk_file")


def test_nothing_configured_means_local_default_and_no_key(tmp_path: Path) -> None:
    cfg = resolve(None, None, {"DEEPEXEC_CREDENTIALS_FILE": str(tmp_path / "missing.json")})
    assert (cfg.base_url, cfg.api_key) == ("http://127.0.0.1:8765", None)


def test_client_finds_server_and_key_in_the_credentials_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = write_creds(tmp_path / "c.json", "http://127.0.0.1:9/", "dxk_from_file")
    monkeypatch.delenv("DEEPEXEC_BASE_URL", raising=False)
    monkeypatch.delenv("DEEPEXEC_API_KEY", raising=False)
    monkeypatch.setenv("DEEPEXEC_CREDENTIALS_FILE", str(creds))
    with DeepExecClient() as c:
        assert c.base_url == "http://127.0.0.1:9"
        assert c._status_call("j").spec.headers["Authorization"] == "Bearer dxk_from_file"
    monkeypatch.setenv("DEEPEXEC_API_KEY", "dxk_env")
    with DeepExecClient() as c:
        assert c._status_call("j").spec.headers["Authorization"] == "Bearer dxk_env"
    with DeepExecClient(api_key="dxk_arg") as c:
        assert c._status_call("j").spec.headers["Authorization"] == "Bearer dxk_arg"
