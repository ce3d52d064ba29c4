"""Submitting a job and reading its status: the operations both answer with, the FastAPI
routes (``routes.py``, which document them in OpenAPI) and ``HotRoutes`` (``hot_routes.py``,
which answers most of them ahead of FastAPI)."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from deepexec_sdk.types import IDEMPOTENCY_HEADER, JobSubmitRequest, MCPJobStatusResponse

from ..errors import BadRequest, UnsupportedMediaType
from ..views import job_status, job_summary
from ..web.services import Services
from .errors import validation_details, validation_failure

#: Serialises straight to bytes: a status can carry megabytes of output, and
#: ``model_dump_json().encode()`` would hold them twice more.
_STATUS_JSON = TypeAdapter(MCPJobStatusResponse)


async def status_body(svc: Services, tenant_id: str, job_id: str, wait: float) -> bytes:
    """The JSON a status read answers: the job now, or once terminal when ``wait`` > 0 (up to
    that many seconds, capped by the server's ``max_wait_seconds``). Raises ``NotFound``.
    A terminal job, which never changes again, costs no store read the next time: its bytes
    are kept in ``svc.status_cache``."""
    cache = svc.status_cache
    cached = cache.get(tenant_id, job_id)
    if cached is not None:
        return cached
    if wait > 0:
        job = await svc.engine.wait(tenant_id, job_id, min(wait, svc.settings.max_wait_seconds))
        body, terminal = _STATUS_JSON.dump_json(job_status(job)), job.is_terminal
    else:
        body, terminal = await svc.engine.status_json(tenant_id, job_id)
    if terminal:
        cache.put(tenant_id, job_id, body)
    return body


def check_json_media(content_type: str | None) -> None:
    """Raise ``UnsupportedMediaType`` unless a body's media type is JSON (or not given)."""
    if content_type is None:
        return
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"send the body as application/json (got {media or 'no media type'})"
        )


async def submit_body(
    svc: Services, tenant_id: str, req: JobSubmitRequest, idempotency_key: str | None
) -> tuple[int, bytes]:
    """Submit a job: 201 and its summary, or 200 and the first job for a replayed key."""
    check_idempotency_key(idempotency_key)
    job, created = await svc.engine.submit(tenant_id, req, idempotency_key)
    return 201 if created else 200, job_summary(job).model_dump_json().encode()


def check_idempotency_key(idempotency_key: str | None) -> None:
    """Raise ``BadRequest`` unless the ``Idempotency-Key`` header is absent or 1-200
    printable ASCII characters."""
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= 200
        and idempotency_key.isprintable()
        and idempotency_key.isascii()
    ):
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1-200 printable ASCII characters")


def parse_submission(body: bytes) -> JobSubmitRequest:
    """The body of a submit, or the 400/422 ``ServiceError`` FastAPI's validation would give."""
    if not body.strip():
        details = [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
        raise validation_failure(details)
    try:
        return JobSubmitRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_failure(validation_details(exc.errors(), ("body",))) from None
