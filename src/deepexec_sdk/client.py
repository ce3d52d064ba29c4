"""``DeepExecClient``: the synchronous client. Only sending, sleeping and closing live here; the
rest is in ``_core`` and shared with ``DeepExecAsyncClient`` (a test keeps the two in parity)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from ._core import _BaseClient
from ._requests import Call, RequestSpec, code_execution_data, text_generation_data
from .types import (
    JobStatus,
    LanguageListResponse,
    MCPBatchCancelResponse,
    MCPBatchResponse,
    MCPBatchStatusResponse,
    MCPCancelJobResponse,
    MCPJobEvent,
    MCPJobListResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
    ModelListResponse,
    WebhookDeletedResponse,
    WebhookDeliveryListResponse,
    WebhookEndpointListResponse,
    WebhookEndpointResponse,
)

T = TypeVar("T", bound=BaseModel)


class DeepExecClient(_BaseClient):
    """A DeepExec server's jobs, from synchronous code.

    ``base_url`` and ``api_key`` default to ``$DEEPEXEC_BASE_URL`` / ``$DEEPEXEC_API_KEY``, then
    to the credentials file ``deepexec serve`` writes. ``timeout`` bounds each HTTP request;
    ``max_retries`` is how often a request is retried after a connection error, a timeout, or
    an HTTP 408/429/502/503/504. Pass ``http_client`` to bring your own ``httpx.Client``
    (proxies, TLS, transports); it is then yours to close.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, max_retries=max_retries)
        self._owns_http = http_client is None
        if http_client is None:
            http_client = httpx.Client(timeout=timeout)
        self._http = http_client

    def __enter__(self) -> DeepExecClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (not those of an ``http_client`` you passed in)."""
        if self._owns_http:
            self._http.close()

    # -- jobs ------------------------------------------------------------------------------

    def submit_mcp_job(
        self,
        name: str,
        job_type: str,
        data: Mapping[str, Any],
        timeout: int = 60,
        priority: int = 0,
        tags: Sequence[str] | None = None,
        *,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> MCPJobResponse:
        """Submit a job; returns its id and initial status. Safe to retry: one idempotency key
        (yours, or a fresh one) goes with every attempt, so at most one job is created.
        ``webhook_url``: where to POST the job's end, signed (``get_webhook("job-urls")``
        gives the key)."""
        return self._call(
            self._submit_call(
                name, job_type, data, timeout, priority, tags, idempotency_key, webhook_url
            )
        )

    def get_mcp_job_status(self, job_id: str) -> MCPJobStatusResponse:
        """A job's current status, progress, result and error."""
        return self._call(self._status_call(job_id))

    def cancel_mcp_job(self, job_id: str, reason: str | None = None) -> MCPCancelJobResponse:
        """Cancel a pending or running job. Raises ``MCPConflictError`` if it already ended."""
        return self._call(self._cancel_call(job_id, reason))

    def wait_for_mcp_job_completion(
        self, job_id: str, poll_interval: float = 1.0, max_wait_time: float | None = None
    ) -> MCPJobStatusResponse:
        """Wait until the job is COMPLETED, FAILED or CANCELED and return that status.

        Returns as soon as the job ends (the server holds each request open), asking again at
        least every ``poll_interval`` seconds. Raises ``JobWaitTimeoutError`` (a
        ``TimeoutError``) after ``max_wait_time`` seconds; None waits as long as it takes.
        """
        clock = self._wait_clock(poll_interval, max_wait_time)
        while True:
            sent = time.monotonic()
            status = self._call(self._status_call(job_id, wait=clock.long_poll(sent)))
            now = time.monotonic()
            if status.is_terminal:
                return status
            if clock.expired(now):
                raise clock.timeout_error(job_id, status)
            time.sleep(clock.pause(sent, now))

    def list_mcp_jobs(
        self,
        status: JobStatus | str | None = None,
        tags: Sequence[str] | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MCPJobListResponse:
        """A page of jobs, newest first, filtered by status, tags (all must match) and name.
        Each is a ``MCPJobSummary``, without its result: ``get_mcp_job_status`` returns it."""
        return self._call(self._list_call(status, tags, name, limit, cursor))

    def stream_mcp_job_events(self, job_id: str) -> Iterator[MCPJobEvent]:
        """The job's live events: its current status first, then progress and output as they
        happen, and last its terminal status. Reconnects if the connection drops."""
        stream = self._event_stream(job_id)
        while True:
            response = self._send(stream.spec)
            try:
                self._raise_for_response(response)
                stream.connected()
                for chunk in response.iter_bytes():
                    yield from stream.feed(chunk)
                    if stream.done:
                        return
            except httpx.TransportError as exc:
                delay = stream.dropped(exc, jitter=random.random())
            else:
                delay = stream.dropped(None, jitter=random.random())
            finally:
                response.close()
            time.sleep(delay)

    def execute_code_and_wait(
        self,
        code: str,
        language: str = "python",
        *,
        stdin: str | None = None,
        args: Sequence[str] | None = None,
        files: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        tests: Sequence[Mapping[str, Any]] | None = None,
        compare: str | None = None,
        float_tolerance: float | None = None,
        stop_on_failure: bool | None = None,
        timeout: int = 60,
        priority: int = 0,
        tags: Sequence[str] | None = None,
        name: str | None = None,
        poll_interval: float = 1.0,
        max_wait_time: float | None = None,
    ) -> MCPJobStatusResponse:
        """Run ``code`` in the sandbox and return the job's terminal status (a failed program
        is a FAILED status with ``error`` and ``result``, not an exception). With ``tests``
        (``[{"stdin", "expected_output", "name"}]``) the program is compiled once and run per
        test; ``result["tests"]`` holds a verdict each and ``result["summary"]`` the counts."""
        data = code_execution_data(
            code, language, stdin=stdin, args=args, files=files, env=env, tests=tests,
            compare=compare, float_tolerance=float_tolerance, stop_on_failure=stop_on_failure,
        )  # fmt: skip
        job = self.submit_mcp_job(
            name or f"{language} code", "code_execution", data, timeout, priority, tags
        )
        return self.wait_for_mcp_job_completion(job.job_id, poll_interval, max_wait_time)

    def generate_text_and_wait(
        self,
        prompt: str,
        model: str | None = None,
        max_tokens: int = 256,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        system: str | None = None,
        timeout: int = 60,
        priority: int = 0,
        tags: Sequence[str] | None = None,
        name: str | None = None,
        poll_interval: float = 1.0,
        max_wait_time: float | None = None,
    ) -> MCPJobStatusResponse:
        """Generate text from ``prompt`` and return the job's terminal status; the text is in
        ``result["text"]``."""
        data = text_generation_data(
            prompt,
            model,
            max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
            system=system,
        )
        job = self.submit_mcp_job(
            name or "text generation", "text_generation", data, timeout, priority, tags
        )
        return self.wait_for_mcp_job_completion(job.job_id, poll_interval, max_wait_time)

    # -- batches ---------------------------------------------------------------------------

    def submit_mcp_jobs(
        self, jobs: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> MCPBatchResponse:
        """Submit up to 1,000 jobs in one request, stored all or none; returns the batch's id
        and its jobs in order. Each job is a mapping of ``submit_mcp_job``'s arguments
        (``name``, ``job_type``, ``data``, and optionally ``timeout``, ``priority``, ``tags``,
        ``idempotency_key``). Safe to retry: the batch and each job get a key once, sent on
        every attempt, so nothing is created twice. An invalid job raises
        ``MCPValidationError`` whose ``details`` name every bad job (``index``) and field."""
        return self._call(self._submit_batch_call(jobs, idempotency_key))

    def wait_for_mcp_jobs(
        self,
        job_ids: Sequence[str],
        poll_interval: float = 1.0,
        max_wait_time: float | None = None,
    ) -> list[MCPJobStatusResponse]:
        """Wait until every job of ``job_ids`` has ended; their terminal statuses, in the
        order of ``job_ids``. Raises ``JobWaitTimeoutError`` (``pending`` lists the jobs not
        ended) after ``max_wait_time`` seconds; None waits as long as it takes."""
        ended = {
            job.job_id: job
            for job in self.iter_mcp_jobs_as_completed(job_ids, poll_interval, max_wait_time)
        }
        return [ended[job_id] for job_id in job_ids]

    def iter_mcp_jobs_as_completed(
        self,
        job_ids: Sequence[str],
        poll_interval: float = 1.0,
        max_wait_time: float | None = None,
    ) -> Iterator[MCPJobStatusResponse]:
        """Each job of ``job_ids`` once it has ended (its terminal status), in the order they
        end. One request waits on all of them (the server answers as soon as one ends),
        asking again at least every ``poll_interval`` seconds; ``max_wait_time`` as for
        ``wait_for_mcp_jobs``."""
        wait = self._jobs_wait(job_ids, poll_interval, max_wait_time)
        while not wait.done:
            sent = time.monotonic()
            call = self._wait_jobs_call(wait.next_ids(), wait.clock.long_poll(sent))
            ended = wait.take(self._call(call))
            yield from ended
            time.sleep(wait.pause(bool(ended), sent, time.monotonic()))

    def get_mcp_batch_status(self, batch_id: str) -> MCPBatchStatusResponse:
        """A batch's progress: how many of its jobs are in each status, and whether all
        have ended."""
        return self._call(self._batch_status_call(batch_id))

    def cancel_mcp_batch(self, batch_id: str, reason: str | None = None) -> MCPBatchCancelResponse:
        """Cancel every pending job of a batch and ask its running ones to stop; jobs that
        already ended keep their status."""
        return self._call(self._batch_cancel_call(batch_id, reason))

    # -- the server's offer ---------------------------------------------------------------

    def list_models(self) -> ModelListResponse:
        """The models ``text_generation`` jobs may name, each with whether it is usable now
        and, if not, what to set on the server (``hint``)."""
        return self._call(self._models_call())

    def list_languages(self) -> LanguageListResponse:
        """The languages ``code_execution`` jobs can use on this server, with versions."""
        return self._call(self._languages_call())

    # -- webhooks --------------------------------------------------------------------------

    def create_webhook(
        self, url: str, events: Sequence[str] | None = None
    ) -> WebhookEndpointResponse:
        """Send the end of every job of this tenant (of ``events``: ``job.completed``,
        ``job.failed``, ``job.canceled``; None: all) to ``url``, signed with the endpoint's own
        key (``secret`` of the answer; verify with the ``standardwebhooks`` library)."""
        return self._call(self._create_webhook_call(url, events))

    def list_webhooks(self) -> WebhookEndpointListResponse:
        """This tenant's webhook endpoints (without their keys)."""
        return self._call(self._webhook_call("GET", WebhookEndpointListResponse))

    def get_webhook(self, endpoint_id: str) -> WebhookEndpointResponse:
        """An endpoint with its key; ``"job-urls"``: the key of jobs' own ``webhook_url``."""
        return self._call(self._webhook_call("GET", WebhookEndpointResponse, endpoint_id))

    def update_webhook(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        enabled: bool | None = None,
    ) -> WebhookEndpointResponse:
        """Change an endpoint; ``enabled=True`` re-enables one a 410 disabled."""
        return self._call(self._update_webhook_call(endpoint_id, url, events, enabled))

    def rotate_webhook_secret(self, endpoint_id: str) -> WebhookEndpointResponse:
        """A new key for an endpoint (or ``"job-urls"``); the old one keeps signing beside it
        until ``previous_until``."""
        return self._call(
            self._webhook_call("POST", WebhookEndpointResponse, endpoint_id, "rotate-secret")
        )

    def delete_webhook(self, endpoint_id: str) -> WebhookDeletedResponse:
        """Delete an endpoint; its pending deliveries are given up."""
        return self._call(self._webhook_call("DELETE", WebhookDeletedResponse, endpoint_id))

    def get_mcp_job_webhooks(self, job_id: str) -> WebhookDeliveryListResponse:
        """The job's webhook deliveries: state, every attempt, the next one's time."""
        return self._call(self._job_webhooks_call(job_id))

    # -- I/O -------------------------------------------------------------------------------

    def _call(self, call: Call[T]) -> T:
        return self._parse(call, self._send(call.spec))

    def _send(self, spec: RequestSpec) -> httpx.Response:
        """Send ``spec``, retrying as the core decides; the last response (read, unless it is a
        successful stream) or the translated transport error."""
        attempt = 0
        while True:
            request = self._http.build_request(
                spec.method,
                spec.url,
                params=list(spec.params),
                headers=dict(spec.headers),
                json=spec.json,
                timeout=spec.timeout,
            )
            try:
                response = self._http.send(request, stream=spec.stream)
                if spec.stream and not response.is_success:
                    response.read()
            except httpx.TransportError as exc:
                delay = self._retry_delay(spec, attempt, error=exc)
                if delay is None:
                    raise self._transport_error(spec, exc) from exc
            else:
                delay = self._retry_delay(spec, attempt, response=response)
                if delay is None:
                    return response
                response.close()
            time.sleep(delay)
            attempt += 1
