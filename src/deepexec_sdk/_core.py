"""The SDK's pure core: everything the two clients share that does no I/O.

It builds requests, maps responses to models or exceptions, decides retries and backoff, paces
``wait_for_mcp_job_completion`` and follows an event stream's state. ``DeepExecClient`` and
``DeepExecAsyncClient`` subclass :class:`_BaseClient` and add only sending, sleeping and closing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from ._version import __version__
from .config import ENV_API_KEY, credentials_path, resolve
from .errors import (
    DeepExecError,
    JobWaitTimeoutError,
    MCPAuthenticationError,
    MCPConflictError,
    MCPConnectionError,
    MCPExecutionError,
    MCPJobNotFoundError,
    MCPProtocolError,
    MCPRateLimitError,
    MCPServerError,
    MCPTimeoutError,
    MCPValidationError,
)
from .retry import RETRYABLE_STATUS_CODES, RetryPolicy, parse_retry_after
from .streaming import ServerSentEvent, SSEDecoder
from .types import (
    IDEMPOTENCY_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REQUEST_ID_HEADER,
    ErrorEnvelope,
    JobStatus,
    LanguageListResponse,
    MCPCancelJobResponse,
    MCPJobEvent,
    MCPJobListResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
    ModelListResponse,
)

logger = logging.getLogger("deepexec_sdk")

T = TypeVar("T", bound=BaseModel)

USER_AGENT = f"deepexec-sdk/{__version__}"

# --- retry policy -----------------------------------------------------------------------------

#: The longest long-poll the server holds (``GET /v1/jobs/{id}?wait=S``, S <= 60).
MAX_LONG_POLL = 60.0
#: The server sends a keep-alive comment every 15 s on an event stream, so 60 s of silence
#: means a half-open connection: it is treated as a drop and the stream reconnects.
STREAM_READ_TIMEOUT: float | None = 60.0
#: Pauses before reopening a dropped event stream (how many times: the client's max_retries).
RECONNECT_POLICY = RetryPolicy()


def is_retryable_error(error: BaseException) -> bool:
    """Whether a transport failure may succeed on a new attempt.

    A ``RemoteProtocolError`` is a connection closed before or during the answer; retrying it is
    what makes a submit survive a cut connection (the idempotency key prevents a second job).
    """
    return isinstance(
        error, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


def should_retry(
    attempt: int,
    policy: RetryPolicy,
    *,
    status_code: int | None = None,
    error: BaseException | None = None,
) -> bool:
    """Whether attempt number ``attempt`` (0 for the first) may be followed by another."""
    if not policy.allows(attempt):
        return False
    if error is not None:
        return is_retryable_error(error)
    return status_code in RETRYABLE_STATUS_CODES


# --- error mapping ----------------------------------------------------------------------------


def error_class(status_code: int) -> type[DeepExecError]:
    """The exception class for an HTTP error status (after retries)."""
    if status_code in (401, 403):
        return MCPAuthenticationError
    if status_code == 404:
        return MCPJobNotFoundError
    if status_code == 409:
        return MCPConflictError
    if status_code in (400, 413, 415, 422):
        return MCPValidationError
    if status_code == 429:
        return MCPRateLimitError
    if status_code >= 500:
        return MCPServerError
    return MCPExecutionError


def protocol_problem(response: httpx.Response, base_url: str) -> MCPProtocolError | None:
    """Why ``response`` is not from a DeepExec server speaking our protocol major, or None."""
    raw = response.headers.get(PROTOCOL_HEADER)
    where = f"{response.request.method} {response.request.url.path}"
    if raw is None:
        return MCPProtocolError(
            f"the server at {base_url} did not identify as DeepExec (no {PROTOCOL_HEADER} "
            f"header in its HTTP {response.status_code} answer to {where}) — is the base_url "
            "right?",
            status_code=response.status_code,
            error_type="not_deepexec",
            request_id=response.headers.get(REQUEST_ID_HEADER),
        )
    major = raw.split(".")[0].strip()
    if major != PROTOCOL_VERSION.split(".")[0]:
        return MCPProtocolError(
            f"the server at {base_url} speaks DeepExec protocol {raw!r}, this SDK "
            f"(deepexec-sdk {__version__}) speaks {PROTOCOL_VERSION!r}; upgrade the older one",
            status_code=response.status_code,
            error_type="unsupported_protocol",
            request_id=response.headers.get(REQUEST_ID_HEADER),
        )
    return None


def error_from_response(
    response: httpx.Response, base_url: str, auth_hint: str | None = None
) -> DeepExecError:
    """The exception for a non-2xx ``response`` whose body has been read.

    ``auth_hint`` is appended to the message of 401/403 answers: how to configure a key.
    """
    status = response.status_code
    request_id = response.headers.get(REQUEST_ID_HEADER)
    url = str(response.request.url)
    if response.headers.get(PROTOCOL_HEADER) is None and status in (502, 503, 504):
        # A gateway between us and DeepExec answered: the server is down or restarting, which
        # is not a protocol mismatch.
        return MCPServerError(
            f"HTTP {status} for {url} came from a proxy or gateway, not from DeepExec itself: "
            "the server behind it may be down or restarting",
            status_code=status,
            error_type="bad_gateway" if status == 502 else "unavailable",
            request_id=request_id,
        )
    problem = protocol_problem(response, base_url)
    if problem is not None:
        return problem
    if 300 <= status < 400:
        location = response.headers.get("location", "nowhere")
        return MCPProtocolError(
            f"unexpected HTTP {status} redirect from {url} to {location} — is the base_url right?",
            status_code=status,
            error_type="unexpected_redirect",
            request_id=request_id,
        )
    try:
        body = ErrorEnvelope.model_validate_json(response.content).error
    except ValidationError:
        snippet = response.content[:200].decode("utf-8", errors="replace")
        return MCPProtocolError(
            f"HTTP {status} from {url} without DeepExec's error envelope: {snippet!r}",
            status_code=status,
            error_type="invalid_error_body",
            request_id=request_id,
        )
    message = body.message
    if status in (401, 403) and auth_hint:
        message = f"{message} — {auth_hint}"
    return error_class(status)(
        message,
        status_code=status,
        error_type=body.type,
        request_id=body.request_id or request_id,
        details=body.details,
    )


def transport_error(error: httpx.TransportError, method: str, url: str) -> DeepExecError:
    """The SDK exception for an httpx transport failure (raise it ``from error``)."""
    if isinstance(error, httpx.TimeoutException):
        return MCPTimeoutError(
            f"{method} {url} timed out ({type(error).__name__}); the job itself may be fine — "
            "check its status, or pass a larger timeout= to the client",
            error_type="timeout",
        )
    origin = httpx.URL(url).copy_with(path="/", query=None)
    reason = str(error) or type(error).__name__
    return MCPConnectionError(
        f"could not reach the DeepExec server at {str(origin).rstrip('/')} ({reason}); is it "
        "running? Start one on this machine with `deepexec serve`",
        error_type="connection_error",
    )


def validation_problem(
    model: type[BaseModel], response: httpx.Response, exc: ValidationError
) -> MCPProtocolError:
    """A 2xx body that does not match the model the protocol promises."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )
    return MCPProtocolError(
        f"the answer to {response.request.method} {response.request.url.path} (HTTP "
        f"{response.status_code}) is not a valid {model.__name__}: {problems}",
        status_code=response.status_code,
        error_type="invalid_response",
        request_id=response.headers.get(REQUEST_ID_HEADER),
    )


# --- requests ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """Everything needed to send one logical request, identical on every retry."""

    method: str
    url: str
    timeout: httpx.Timeout
    # Not in repr: it holds the API key.
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    params: Sequence[tuple[str, str]] = ()
    json: Any = None
    stream: bool = False


@dataclasses.dataclass(frozen=True)
class Call(Generic[T]):
    """A request and the model its 2xx body must parse as."""

    spec: RequestSpec
    model: type[T]


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def omit_none(**fields: Any) -> dict[str, Any]:
    """The fields whose value is not None, in order: optional job data stays off the wire."""
    return {k: v for k, v in fields.items() if v is not None}


def code_execution_data(
    code: str,
    language: str,
    *,
    stdin: str | None,
    args: Sequence[str] | None,
    files: Mapping[str, str] | None,
    env: Mapping[str, str] | None,
) -> dict[str, Any]:
    """The ``data`` of a ``code_execution`` job."""
    return omit_none(
        code=code,
        language=language,
        stdin=stdin,
        args=list(args) if args is not None else None,
        files=dict(files) if files is not None else None,
        env=dict(env) if env is not None else None,
    )


def text_generation_data(
    prompt: str,
    model: str | None,
    max_tokens: int,
    *,
    temperature: float | None,
    top_p: float | None,
    stop: str | Sequence[str] | None,
    seed: int | None,
    system: str | None,
) -> dict[str, Any]:
    """The ``data`` of a ``text_generation`` job."""
    return omit_none(
        prompt=prompt,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop if stop is None or isinstance(stop, str) else list(stop),
        seed=seed,
        system=system,
    )


# --- waiting ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WaitClock:
    """Paces ``wait_for_mcp_job_completion``. Times are ``time.monotonic()`` values.

    Each request is a long-poll that the server ends the moment the job is terminal, held for at
    most ``poll_interval`` (and never past the deadline): completion is seen at once, and
    ``poll_interval`` stays the longest gap between two looks at the job.
    """

    poll_interval: float
    max_wait_time: float | None
    started: float

    def __post_init__(self) -> None:
        if not 0 < self.poll_interval < math.inf:
            raise ValueError(
                f"poll_interval must be a finite number of seconds > 0, got {self.poll_interval!r}"
            )
        if self.max_wait_time is not None and not self.max_wait_time >= 0:
            raise ValueError(f"max_wait_time must be >= 0 or None, got {self.max_wait_time!r}")

    def remaining(self, now: float) -> float | None:
        if self.max_wait_time is None:
            return None
        return max(0.0, self.started + self.max_wait_time - now)

    def long_poll(self, now: float) -> float:
        """How long the next request asks the server to hold (``wait=``)."""
        hold = min(self.poll_interval, MAX_LONG_POLL)
        remaining = self.remaining(now)
        return hold if remaining is None else min(hold, remaining)

    def expired(self, now: float) -> bool:
        remaining = self.remaining(now)
        return remaining is not None and remaining <= 0

    def pause(self, sent: float, now: float) -> float:
        """Sleep before the next request. Zero after a full long-poll; the rest of the interval
        when the server answered early without the job ending (a server that does not hold)."""
        gap = self.poll_interval - (now - sent)
        remaining = self.remaining(now)
        if remaining is not None:
            gap = min(gap, remaining)
        return max(0.0, gap)

    def timeout_error(self, job_id: str, last: MCPJobStatusResponse) -> JobWaitTimeoutError:
        return JobWaitTimeoutError(
            f"job {job_id} did not finish within {self.max_wait_time} s "
            f"(last status {last.status})",
            job_id=job_id,
            last_status=last,
        )


# --- event streams ----------------------------------------------------------------------------


def job_event(job_id: str, sse: ServerSentEvent) -> MCPJobEvent | None:
    """The SDK event for one SSE event, or None for an event type this SDK does not know."""
    if sse.event not in ("status", "progress", "output"):
        return None
    try:
        payload = json.loads(sse.data)
    except ValueError as exc:
        raise MCPProtocolError(
            f"event stream of job {job_id}: {sse.event} event data is not JSON: {sse.data[:200]!r}",
            error_type="invalid_event",
        ) from exc
    if not isinstance(payload, dict):
        raise MCPProtocolError(
            f"event stream of job {job_id}: {sse.event} event data is not a JSON object",
            error_type="invalid_event",
        )
    raw: dict[str, Any]
    if sse.event == "status":
        raw = {"type": "status", "job_id": payload.get("job_id", job_id), "job": payload}
    else:
        raw = {**payload, "type": sse.event, "job_id": job_id}
    try:
        return MCPJobEvent.model_validate(raw)
    except ValidationError as exc:
        raise MCPProtocolError(
            f"event stream of job {job_id}: invalid {sse.event} event: {exc.errors()[0]['msg']}",
            error_type="invalid_event",
        ) from exc


class EventStreamState:
    """Follows one ``stream_mcp_job_events`` call across reconnections.

    The stream ends after the terminal status event. A connection that closes or breaks before
    it is reopened (the server starts each stream with the current status) after a backoff, up
    to ``max_reconnects`` times in a row without news; output emitted while disconnected is
    lost, but the final status still carries the job's full result.
    """

    def __init__(self, job_id: str, spec: RequestSpec, max_reconnects: int) -> None:
        self.job_id = job_id
        self.spec = spec
        self.max_reconnects = max_reconnects
        self.done = False
        self._failures = 0
        self._decoder = SSEDecoder()
        self._events_on_connection = 0

    def connected(self) -> None:
        """A new connection is open: parse it from scratch."""
        self._decoder = SSEDecoder()
        self._events_on_connection = 0

    def feed(self, chunk: bytes) -> list[MCPJobEvent]:
        """The events completed by ``chunk``; none after the terminal status."""
        out: list[MCPJobEvent] = []
        for sse in self._decoder.feed(chunk):
            if self.done:
                break
            event = job_event(self.job_id, sse)
            if event is None:
                continue
            out.append(event)
            self._events_on_connection += 1
            if self._events_on_connection > 1:
                # More than the opening status: this connection made progress.
                self._failures = 0
            if event.type == "status" and event.job is not None and event.job.is_terminal:
                self.done = True
        return out

    def dropped(self, error: httpx.TransportError | None, *, jitter: float) -> float:
        """The connection ended before the terminal status: the delay before reconnecting.
        Raises ``MCPConnectionError`` once reconnections are exhausted."""
        self._decoder.flush()
        reason = f"broke ({type(error).__name__}: {error})" if error else "closed early"
        if self._failures >= self.max_reconnects:
            raise MCPConnectionError(
                f"the event stream of job {self.job_id} {reason} before the job ended, "
                f"{self._failures + 1} time(s) in a row; giving up",
                error_type="stream_interrupted",
            ) from error
        delay = RECONNECT_POLICY.backoff(self._failures, jitter=jitter)
        self._failures += 1
        logger.info(
            "event stream of job %s %s; reconnecting in %.2f s (%d/%d)",
            self.job_id,
            reason,
            delay,
            self._failures,
            self.max_reconnects,
        )
        return delay


# --- the shared base of both clients ----------------------------------------------------------


class _BaseClient:
    """Configuration, request building, response mapping and retry decisions; no I/O."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        timeout: float,
        max_retries: int,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        config = resolve(base_url, api_key)
        url = httpx.URL(config.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self._base_url = config.base_url
        self._api_key = config.api_key
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._retry = RetryPolicy(max_retries=max_retries)
        self._key_source = self._describe_key_source(api_key)

    @property
    def base_url(self) -> str:
        """The server this client talks to (no trailing slash)."""
        return self._base_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r})"

    @staticmethod
    def _describe_key_source(api_key: str | None) -> str:
        if api_key is not None:
            return "the api_key argument"
        if os.environ.get(ENV_API_KEY):
            return f"${ENV_API_KEY}"
        return f"the credentials file {credentials_path()}"

    def _auth_hint(self) -> str:
        how = (
            f"pass api_key=..., set {ENV_API_KEY}, or run `deepexec serve` on this machine, "
            f"which writes the credentials file at {credentials_path()}"
        )
        if self._api_key is None:
            return f"no API key is configured: {how}"
        return f"the API key from {self._key_source} was refused; to use another, {how}"

    # -- building --------------------------------------------------------------------------

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {
            "Accept": accept,
            "User-Agent": USER_AGENT,
            PROTOCOL_HEADER: PROTOCOL_VERSION,
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _url(self, *segments: str) -> str:
        for segment in segments:
            if not segment:
                raise ValueError("job_id must be a non-empty string")
        path = "/".join(quote(s, safe="") for s in segments)
        return f"{self._base_url}/v1/jobs" + (f"/{path}" if path else "")

    def _submit_call(
        self,
        name: str,
        job_type: str,
        data: Mapping[str, Any],
        timeout: int,
        priority: int,
        tags: Sequence[str] | None,
        idempotency_key: str | None,
    ) -> Call[MCPJobResponse]:
        headers = self._headers()
        # One key per logical submit, reused by every retry: a retried submit can never
        # create a second job.
        headers[IDEMPOTENCY_HEADER] = idempotency_key or f"sdk-{uuid.uuid4()}"
        body = {
            "name": name,
            "job_type": job_type,
            "data": dict(data),
            "timeout": timeout,
            "priority": priority,
            "tags": list(tags or ()),
        }
        spec = RequestSpec(
            "POST", self._url(), httpx.Timeout(self._timeout), headers=headers, json=body
        )
        return Call(spec, MCPJobResponse)

    def _status_call(self, job_id: str, wait: float = 0.0) -> Call[MCPJobStatusResponse]:
        params: list[tuple[str, str]] = []
        timeout = httpx.Timeout(self._timeout)
        if wait > 0:
            params.append(("wait", _format_seconds(wait)))
            # The server holds the answer up to ``wait`` seconds: the read must outlast it.
            timeout = httpx.Timeout(self._timeout, read=self._timeout + wait)
        spec = RequestSpec(
            "GET", self._url(job_id), timeout, headers=self._headers(), params=params
        )
        return Call(spec, MCPJobStatusResponse)

    def _cancel_call(self, job_id: str, reason: str | None) -> Call[MCPCancelJobResponse]:
        spec = RequestSpec(
            "POST",
            self._url(job_id, "cancel"),
            httpx.Timeout(self._timeout),
            headers=self._headers(),
            json=omit_none(reason=reason),
        )
        return Call(spec, MCPCancelJobResponse)

    def _list_call(
        self,
        status: JobStatus | str | None,
        tags: Sequence[str] | None,
        name: str | None,
        limit: int,
        cursor: str | None,
    ) -> Call[MCPJobListResponse]:
        params: list[tuple[str, str]] = []
        if status is not None:
            params.append(("status", str(status)))
        params.extend(("tag", tag) for tag in tags or ())
        if name is not None:
            params.append(("name", name))
        params.append(("limit", str(limit)))
        if cursor is not None:
            params.append(("cursor", cursor))
        spec = RequestSpec(
            "GET",
            self._url(),
            httpx.Timeout(self._timeout),
            headers=self._headers(),
            params=params,
        )
        return Call(spec, MCPJobListResponse)

    def _models_call(self) -> Call[ModelListResponse]:
        spec = RequestSpec(
            "GET",
            f"{self._base_url}/v1/models",
            httpx.Timeout(self._timeout),
            headers=self._headers(),
        )
        return Call(spec, ModelListResponse)

    def _languages_call(self) -> Call[LanguageListResponse]:
        spec = RequestSpec(
            "GET",
            f"{self._base_url}/v1/languages",
            httpx.Timeout(self._timeout),
            headers=self._headers(),
        )
        return Call(spec, LanguageListResponse)

    def _event_stream(self, job_id: str) -> EventStreamState:
        spec = RequestSpec(
            "GET",
            self._url(job_id, "events"),
            httpx.Timeout(self._timeout, read=STREAM_READ_TIMEOUT),
            headers=self._headers(accept="text/event-stream"),
            stream=True,
        )
        return EventStreamState(job_id, spec, self._max_retries)

    def _wait_clock(self, poll_interval: float, max_wait_time: float | None) -> WaitClock:
        return WaitClock(poll_interval, max_wait_time, time.monotonic())

    # -- answers ---------------------------------------------------------------------------

    def _parse(self, call: Call[T], response: httpx.Response) -> T:
        """The model of a read response, or the exception its status or body calls for."""
        self._raise_for_response(response)
        try:
            return call.model.model_validate_json(response.content)
        except ValidationError as exc:
            raise validation_problem(call.model, response, exc) from exc

    def _raise_for_response(self, response: httpx.Response) -> None:
        if not response.is_success:
            raise error_from_response(response, self._base_url, self._auth_hint())
        problem = protocol_problem(response, self._base_url)
        if problem is not None:
            raise problem

    def _transport_error(self, spec: RequestSpec, error: httpx.TransportError) -> DeepExecError:
        return transport_error(error, spec.method, spec.url)

    # -- retries ---------------------------------------------------------------------------

    def _retry_delay(
        self,
        spec: RequestSpec,
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: httpx.TransportError | None = None,
    ) -> float | None:
        """Seconds to sleep before retrying, or None to stop here; logs the decision."""
        status = response.status_code if response is not None else None
        retryable = should_retry(attempt, self._retry, status_code=status, error=error)
        reason = f"HTTP {status}" if error is None else f"{type(error).__name__}: {error}"
        if not retryable:
            if attempt > 0 and (error is not None or status in RETRYABLE_STATUS_CODES):
                logger.warning(
                    "%s %s failed after %d attempt(s): %s",
                    spec.method,
                    spec.url,
                    attempt + 1,
                    reason,
                )
            return None
        retry_after = None
        if response is not None:
            retry_after = parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
        delay = self._retry.delay(attempt, jitter=random.random(), retry_after=retry_after)
        assert delay is not None  # allowed above, and no time limit
        logger.info(
            "%s %s: %s; retry %d/%d in %.2f s",
            spec.method,
            spec.url,
            reason,
            attempt + 1,
            self._max_retries,
            delay,
        )
        return delay
