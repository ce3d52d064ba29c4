"""The server's exception tree, under one root, ``DeepExecError``.

``ServiceError`` and its subclasses are what a request may fail with: each door turns them into
its answer (the REST API and MCP over HTTP into the JSON error envelope
``{"error": {type, message, details, request_id}}``, built by ``web/envelope.py``, with the
class's status). The other branches are failures of one part, each translated where it crosses
into a door (a job's error, an MCP error, the CLI's message):

    DeepExecError
    ├── SettingsError         a setting or DEEPEXEC_* variable is invalid (settings.py)
    ├── CatalogError          the model catalog is invalid (executors/models.py)
    ├── BackendError          a model backend failed; the job's error (executors/llm_backends)
    ├── JobOpsError           an MCP job operation was refused; an MCP error (mcp/jobs.py)
    └── ServiceError
        ├── StoreError            500  internal_error (the database failed)
        │   ├── StoreUnavailable  503  store_unavailable (unreachable now; retry)
        │   └── StoreFull         507  insufficient_storage (its disk is full)
        ├── BadRequest            400  invalid_json, unsupported_protocol, invalid_request
        ├── Unauthorized          401  authentication_required, invalid_api_key
        ├── NotFound              404  job_not_found, batch_not_found, not_found
        ├── Conflict              409  job_not_cancelable, idempotency_conflict
        ├── PayloadTooLarge       413  body_too_large
        ├── UnsupportedMediaType  415  unsupported_media_type
        ├── Unprocessable         422  validation_error, invalid_batch, unknown_job_type, ...
        ├── TooManyRequests       429  too_many_subscribers
        └── Unavailable           503  not_ready, shutting_down
"""

from __future__ import annotations

from typing import Any, ClassVar


class DeepExecError(Exception):
    """The root of every exception the server defines."""


class ServiceError(DeepExecError):
    status_code: ClassVar[int] = 500
    default_type: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        details: Any = None,
        retry_after: float | None = None,
        final: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or self.default_type
        self.details = details
        #: Seconds the client should wait before retrying (the ``Retry-After`` header).
        self.retry_after = retry_after
        #: The same request can never succeed (``X-Should-Retry: false``): a 429 for a quota
        #: that waiting does not free, say. Clients that honour the header do not retry.
        self.final = final


class BadRequest(ServiceError):
    status_code = 400
    default_type = "invalid_request"


class Unauthorized(ServiceError):
    status_code = 401
    default_type = "authentication_required"


class NotFound(ServiceError):
    status_code = 404
    default_type = "not_found"


class Conflict(ServiceError):
    status_code = 409
    default_type = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    default_type = "body_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    default_type = "unsupported_media_type"


class Unprocessable(ServiceError):
    status_code = 422
    default_type = "validation_error"


class TooManyRequests(ServiceError):
    status_code = 429
    default_type = "too_many_requests"


class Unavailable(ServiceError):
    status_code = 503
    default_type = "not_ready"


class StoreError(ServiceError):
    """The database failed: a driver's error (sqlite3's, psycopg's), translated at the store's
    boundary; the driver's exception is its ``__cause__``, and the store logged it."""

    def __init__(
        self,
        message: str = "the job store failed; the server log has the details",
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)


class StoreUnavailable(StoreError):
    """The database cannot be reached now (down, restarting, its connections all taken): the
    request may be retried, and nothing it asked for was done."""

    status_code = 503
    default_type = "store_unavailable"


class StoreFull(StoreError):
    """The database's disk is full: nothing was written."""

    status_code = 507
    default_type = "insufficient_storage"


def job_not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r} for this API key", type="job_not_found")


def batch_not_found(batch_id: str) -> NotFound:
    return NotFound(f"no batch {batch_id!r} for this API key", type="batch_not_found")
