"""The SDK's exceptions. One root, a shallow tree:

    DeepExecError
    ├── MCPAuthenticationError        401 / 403: missing, wrong or revoked API key
    ├── MCPConnectionError            the server could not be reached (after retries)
    ├── MCPTimeoutError               one HTTP request took longer than its timeout
    ├── MCPProtocolError              the answer is not DeepExec's protocol (or another version)
    ├── MCPExecutionError             the server refused or could not run the request
    │   ├── MCPValidationError        400 / 413 / 415 / 422: the job or request is invalid
    │   ├── MCPJobNotFoundError       404: no such job for this API key's tenant
    │   ├── MCPConflictError          409: e.g. cancelling a job that already ended
    │   ├── MCPRateLimitError         429, once retries are exhausted (or not retryable)
    │   └── MCPServerError            5xx, once retries are exhausted
    └── JobWaitTimeoutError           wait_for_mcp_job_completion passed max_wait_time
                                      (also a built-in ``TimeoutError``)

A job that runs and fails (non-zero exit, timeout, memory limit...) is not an exception: it is a
job whose status is ``FAILED`` with a typed ``error``. Exceptions are for requests that fail.

Every exception carries ``status_code`` (HTTP, or None), ``error_type`` (the server's error
type, or a client-side one such as ``"connection_error"``), ``message`` and ``request_id``.
"""

from __future__ import annotations

from typing import Any


class DeepExecError(Exception):
    """Root of every exception the SDK raises."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.request_id = request_id
        self.details = details

    def __str__(self) -> str:
        parts = [self.message]
        meta = []
        if self.status_code is not None:
            meta.append(f"HTTP {self.status_code}")
        if self.error_type:
            meta.append(self.error_type)
        if self.request_id:
            meta.append(f"request {self.request_id}")
        if meta:
            parts.append(f"({', '.join(meta)})")
        return " ".join(parts)


#: The reference's name for the root.
MCPError = DeepExecError


class MCPAuthenticationError(DeepExecError):
    """The API key is missing, wrong or revoked (HTTP 401 or 403)."""


class MCPConnectionError(DeepExecError):
    """The server could not be reached, or the connection broke, after all retries."""


class MCPTimeoutError(DeepExecError):
    """A single HTTP request timed out (after all retries). The job itself may still be fine."""


class MCPProtocolError(DeepExecError):
    """The response is not what DeepExec's protocol says: malformed JSON, a missing field, an
    unsupported protocol version, or a server that is not DeepExec at all."""


class MCPExecutionError(DeepExecError):
    """The server refused the request or could not act on it."""


class MCPValidationError(MCPExecutionError):
    """The request is invalid (HTTP 400, 413, 415 or 422); ``details`` says which field."""


class MCPJobNotFoundError(MCPExecutionError):
    """No job with that id exists for this API key's tenant (HTTP 404)."""


class MCPConflictError(MCPExecutionError):
    """The request conflicts with the job's state, e.g. cancelling a finished job (HTTP 409)."""


class MCPRateLimitError(MCPExecutionError):
    """The server kept answering 429 until retries ran out, or answered a 429 that retrying
    cannot help (``X-Should-Retry: false``: a quota such as ``max_timeout``; its ``error_type`` is
    ``quota_exceeded`` and its ``details`` name the quota)."""


class MCPServerError(MCPExecutionError):
    """The server kept failing (HTTP 5xx) until retries ran out."""


class JobWaitTimeoutError(DeepExecError, TimeoutError):
    """``wait_for_mcp_job_completion`` (or ``wait_for_mcp_jobs``) reached ``max_wait_time``
    before the job (every job) ended.

    A subclass of the built-in ``TimeoutError``, so ``except TimeoutError`` catches it.
    ``last_status`` holds the job's state when waiting stopped; after a wait on many jobs,
    ``pending`` lists those that had not ended (``job_id`` is the first of them).
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        last_status: Any = None,
        pending: list[str] | None = None,
    ) -> None:
        super().__init__(message, error_type="wait_timeout")
        self.job_id = job_id
        self.last_status = last_status
        self.pending = pending if pending is not None else [job_id]


__all__ = [
    "DeepExecError",
    "JobWaitTimeoutError",
    "MCPAuthenticationError",
    "MCPConflictError",
    "MCPConnectionError",
    "MCPError",
    "MCPExecutionError",
    "MCPJobNotFoundError",
    "MCPProtocolError",
    "MCPRateLimitError",
    "MCPServerError",
    "MCPTimeoutError",
    "MCPValidationError",
]
