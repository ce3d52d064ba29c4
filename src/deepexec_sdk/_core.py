"""The SDK's pure core: everything the two clients share that does no I/O.

``_BaseClient`` builds requests (``_requests``), maps responses to models or exceptions and
decides retries (``_answers``), paces ``wait_for_mcp_job_completion`` and follows an event
stream's state (``_follow``). ``DeepExecClient`` and ``DeepExecAsyncClient`` subclass it and add
only sending, sleeping and closing.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from ._answers import (
    error_from_response,
    protocol_problem,
    should_retry,
    transport_error,
    validation_problem,
)
from ._follow import STREAM_READ_TIMEOUT, EventStreamState, JobsWait, WaitClock
from ._requests import Call, RequestSpec, batch_items, format_seconds, omit_none
from ._version import __version__
from .config import ENV_API_KEY, credentials_path, resolve
from .errors import DeepExecError
from .retry import RETRYABLE_STATUS_CODES, RetryPolicy, parse_retry_after
from .types import (
    IDEMPOTENCY_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    JobStatus,
    LanguageListResponse,
    MCPBatchCancelResponse,
    MCPBatchResponse,
    MCPBatchStatusResponse,
    MCPCancelJobResponse,
    MCPJobListResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
    MCPJobsWaitResponse,
    ModelListResponse,
    WebhookDeliveryListResponse,
    WebhookEndpointResponse,
)

logger = logging.getLogger("deepexec_sdk")

T = TypeVar("T", bound=BaseModel)

USER_AGENT = f"deepexec-sdk/{__version__}"

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
        webhook_url: str | None = None,
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
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        spec = RequestSpec(
            "POST", self._url(), httpx.Timeout(self._timeout), headers=headers, json=body
        )
        return Call(spec, MCPJobResponse)

    def _submit_batch_call(
        self, jobs: Sequence[Mapping[str, Any]], idempotency_key: str | None
    ) -> Call[MCPBatchResponse]:
        headers = self._headers()
        # As for one submit: the keys (the batch's and each job's) are made once per logical
        # call and sent again on every retry, so a retried batch creates nothing twice.
        headers[IDEMPOTENCY_HEADER] = idempotency_key or f"sdk-{uuid.uuid4()}"
        spec = RequestSpec(
            "POST",
            self._url("batch"),
            httpx.Timeout(self._timeout),
            headers=headers,
            json={"jobs": batch_items(jobs)},
        )
        return Call(spec, MCPBatchResponse)

    def _wait_jobs_call(self, job_ids: Sequence[str], wait: float) -> Call[MCPJobsWaitResponse]:
        spec = RequestSpec(
            "POST",
            self._url("wait"),
            # The server holds the answer up to ``wait`` seconds: the read must outlast it.
            httpx.Timeout(self._timeout, read=self._timeout + wait),
            headers=self._headers(),
            json={"job_ids": list(job_ids), "wait": round(wait, 3)},
        )
        return Call(spec, MCPJobsWaitResponse)

    def _jobs_wait(
        self, job_ids: Sequence[str], poll_interval: float, max_wait_time: float | None
    ) -> JobsWait:
        if isinstance(job_ids, str):
            raise TypeError("job_ids must be a sequence of job ids, not one string")
        return JobsWait(
            list(dict.fromkeys(job_ids)), self._wait_clock(poll_interval, max_wait_time)
        )

    def _webhook_call(
        self, method: str, model: type[T], *segments: str, json: Any = None
    ) -> Call[T]:
        """A call to ``/v1/webhooks/<segments>`` (each quoted)."""
        for segment in segments:
            if not segment:
                raise ValueError("endpoint and job ids must be non-empty strings")
        path = "/".join(quote(s, safe="") for s in segments)
        url = f"{self._base_url}/v1/webhooks" + (f"/{path}" if path else "")
        spec = RequestSpec(
            method, url, httpx.Timeout(self._timeout), headers=self._headers(), json=json
        )
        return Call(spec, model)

    def _create_webhook_call(
        self, url: str, events: Sequence[str] | None
    ) -> Call[WebhookEndpointResponse]:
        body = omit_none(url=url, events=None if events is None else list(events))
        return self._webhook_call("POST", WebhookEndpointResponse, json=body)

    def _update_webhook_call(
        self,
        endpoint_id: str,
        url: str | None,
        events: Sequence[str] | None,
        enabled: bool | None,
    ) -> Call[WebhookEndpointResponse]:
        body = omit_none(url=url, events=None if events is None else list(events), enabled=enabled)
        return self._webhook_call("PATCH", WebhookEndpointResponse, endpoint_id, json=body)

    def _job_webhooks_call(self, job_id: str) -> Call[WebhookDeliveryListResponse]:
        spec = RequestSpec(
            "GET",
            self._url(job_id, "webhooks"),
            httpx.Timeout(self._timeout),
            headers=self._headers(),
        )
        return Call(spec, WebhookDeliveryListResponse)

    def _batch_url(self, batch_id: str, *rest: str) -> str:
        if not batch_id:
            raise ValueError("batch_id must be a non-empty string")
        path = "/".join(quote(s, safe="") for s in (batch_id, *rest))
        return f"{self._base_url}/v1/batches/{path}"

    def _batch_status_call(self, batch_id: str) -> Call[MCPBatchStatusResponse]:
        spec = RequestSpec(
            "GET", self._batch_url(batch_id), httpx.Timeout(self._timeout), headers=self._headers()
        )
        return Call(spec, MCPBatchStatusResponse)

    def _batch_cancel_call(self, batch_id: str, reason: str | None) -> Call[MCPBatchCancelResponse]:
        spec = RequestSpec(
            "POST",
            self._batch_url(batch_id, "cancel"),
            httpx.Timeout(self._timeout),
            headers=self._headers(),
            json=omit_none(reason=reason),
        )
        return Call(spec, MCPBatchCancelResponse)

    def _status_call(self, job_id: str, wait: float = 0.0) -> Call[MCPJobStatusResponse]:
        params: list[tuple[str, str]] = []
        timeout = httpx.Timeout(self._timeout)
        if wait > 0:
            params.append(("wait", format_seconds(wait)))
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
        # ``X-Should-Retry: false``: the server says the same request cannot succeed (a quota
        # that waiting does not free), whatever its status.
        final = response is not None and response.headers.get("x-should-retry") == "false"
        retryable = not final and should_retry(
            attempt, self._retry, status_code=status, error=error
        )
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
