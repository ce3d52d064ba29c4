"""Admission: a submission checked against this server (job type, limits, the executor's own
validation) and made the ``NewJob`` the store takes. Shared by single submits and batches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from deepexec_sdk.types import JobSubmitRequest

from ..domain import NewJob, find_nul
from ..errors import TooManyRequests, Unprocessable
from ..executors.base import JobDataError, ModelUnavailableError
from .parts import EnginePart
from .webhook_ops import check_webhook_url


def request_fingerprint(req: JobSubmitRequest | dict[str, Any]) -> str:
    """A stable hash of a submission, to tell a retry from another request reusing its key.
    Takes the request or its ``model_dump(mode="json")``."""
    plain = req if isinstance(req, dict) else req.model_dump(mode="json")
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def admit(
    part: EnginePart,
    tenant_id: str,
    req: JobSubmitRequest,
    idempotency_key: str | None,
    plain: dict[str, Any],
    loc: tuple[str | int, ...] = ("body",),
    webhook_format: str | None = None,
) -> NewJob:
    """The job ``req`` (whose JSON is ``plain``) becomes, or ``Unprocessable`` naming what
    is wrong; ``loc`` prefixes the places its details name. ``webhook_format``: the shape of
    the job's webhook (None: Standard Webhooks; ``judge0``: a Judge0 callback)."""
    nul_at = find_nul(plain, loc)
    if nul_at is not None:
        raise Unprocessable(
            "strings must not contain the NUL character (\\u0000)",
            details=[{"loc": list(nul_at), "msg": "contains U+0000"}],
        )
    if req.webhook_url is not None:
        check_webhook_url(part.settings, req.webhook_url, (*loc, "webhook_url"))
    executor = part.executors.get(req.job_type)
    if executor is None:
        known = ", ".join(sorted(part.executors))
        raise Unprocessable(
            f"unknown job_type {req.job_type!r}; this server runs: {known}",
            type="unknown_job_type",
            details=[{"loc": [*loc, "job_type"], "msg": f"must be one of: {known}"}],
        )
    max_timeout = part.settings.max_timeout
    if req.timeout > max_timeout:
        raise Unprocessable(
            f"timeout {req.timeout} s is over this server's maximum of {max_timeout} s",
            details=[{"loc": [*loc, "timeout"], "msg": f"must be <= {max_timeout}"}],
        )
    data_in: Mapping[str, Any] = req.data
    if req.job_type == "code_execution":
        caps = (await part.quotas.limits(tenant_id)).code_limits
        if caps:
            data_in = capped_code_limits(data_in, caps, executor.describe(), tenant_id)
    try:
        data = executor.validate(data_in, req.timeout)
        await executor.admit(data)
    except JobDataError as exc:
        details = exc.details
        if loc != ("body",) and isinstance(details, list):
            details = [_relocated(d, loc) for d in details]
        raise Unprocessable(
            exc.message,
            type="model_unavailable"
            if isinstance(exc, ModelUnavailableError)
            else "invalid_job_data",
            details=details,
        ) from exc
    return NewJob(
        tenant_id=tenant_id,
        name=req.name,
        job_type=req.job_type,
        data=data,
        timeout=req.timeout,
        priority=req.priority,
        tags=tuple(dict.fromkeys(req.tags)),
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(plain),
        webhook_url=req.webhook_url,
        webhook_format=webhook_format if req.webhook_url is not None else None,
    )


def capped_code_limits(
    data: Mapping[str, Any],
    caps: Mapping[str, int],
    described: Mapping[str, Any],
    tenant_id: str,
) -> Mapping[str, Any]:
    """A code job's data under the tenant's ``code_limits``: a limit it asks for past its cap
    is a 429 ``quota_exceeded`` naming both (final: waiting will not help); one it leaves to
    the server's default is lowered to the cap where the default is higher (so a capped
    tenant's plain jobs still run)."""
    asked = data.get("limits")
    if asked is not None and not isinstance(asked, Mapping):
        return data  # the executor's validation says what is wrong with it
    limits = dict(asked or {})
    defaults = (described.get("limits") or {}).get("default") or {}
    for name, cap in caps.items():
        value = limits.get(name)
        if value is None:
            default = defaults.get(name)
            if default is None or (isinstance(default, int | float) and default > cap):
                limits[name] = cap
        elif isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
            raise TooManyRequests(
                f"limits.{name} {value} is over tenant {tenant_id!r}'s code_limits quota of {cap}",
                type="quota_exceeded",
                details={"quota": f"code_limits.{name}", "limit": cap},
                final=True,  # waiting frees nothing: ask for less
            )
    return {**data, "limits": limits}


def _relocated(detail: Any, loc: tuple[str | int, ...]) -> Any:
    """An executor's detail (its ``loc`` within the job: ``["data", ...]``) moved under ``loc``."""
    if not isinstance(detail, dict) or not isinstance(detail.get("loc"), list):
        return detail
    where = detail["loc"]
    rest = where[1:] if where[:1] == ["body"] else where
    return {**detail, "loc": [*loc, *rest]}
