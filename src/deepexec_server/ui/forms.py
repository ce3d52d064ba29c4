"""The dashboard's forms and URL parameters, read into what the engine takes (pure, but for
reading a request's body)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request

from deepexec_sdk.types import JobStatus, JobSubmitRequest

from ..domain import JobFilter

#: Job types and statuses offered as filters.
JOB_TYPES = ("code_execution", "text_generation")
STATUSES = tuple(s.value for s in JobStatus)


#: The jobs list's filters, as URL parameters.
LIST_FILTERS = ("status", "type", "tag", "name")


def list_query(params: Mapping[str, str]) -> tuple[JobFilter, dict[str, str]]:
    """The jobs list's filter from its URL parameters, and the parameters kept for links."""
    status = params.get("status") or None
    kept = {k: params[k] for k in LIST_FILTERS if params.get(k)}
    flt = JobFilter(
        status=JobStatus(status) if status in STATUSES else None,
        tags=(params["tag"],) if params.get("tag") else (),
        name=params.get("name") or None,
    )
    return flt, kept


def bulk_notice(params: Mapping[str, str]) -> str | None:
    """What a bulk cancel did, from the parameters it redirected with."""
    try:
        canceled = int(params.get("canceled", ""))
        not_canceled = int(params.get("not_canceled", "0"))
    except ValueError:
        return None
    text = f"{canceled} job{'s' if canceled != 1 else ''} cancelled"
    if not_canceled:
        text += f"; {not_canceled} had already ended"
    return text + "."


def submit_request(form: Mapping[str, str]) -> JobSubmitRequest:
    """The job the submit form describes; ``ValueError`` names a malformed field."""

    def integer(name: str, default: int) -> int:
        raw = form.get(name, "").strip()
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name} must be a whole number") from None

    tags = [t.strip() for t in form.get("tags", "").split(",") if t.strip()]
    common: dict[str, Any] = {
        "timeout": integer("timeout", 60),
        "priority": integer("priority", 0),
        "tags": tags,
        "name": form.get("name") or "dashboard",
    }
    if form.get("kind") == "text":
        data: dict[str, Any] = {"prompt": form.get("prompt", ""), "max_tokens": 256}
        if form.get("model"):
            data["model"] = form["model"]
        data["max_tokens"] = integer("max_tokens", 256)
        return JobSubmitRequest(job_type="text_generation", data=data, **common)
    data = {"code": form.get("code", ""), "language": form.get("language") or "python"}
    if form.get("stdin"):
        data["stdin"] = form["stdin"]
    return JobSubmitRequest(job_type="code_execution", data=data, **common)


async def read_form_lists(request: Request) -> dict[str, list[str]]:
    """A urlencoded form body (the dashboard's forms post nothing else), every value kept."""
    raw = (await request.body()).decode("utf-8", errors="replace")
    return parse_qs(raw, keep_blank_values=True)


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form body, the last value of each field."""
    return {k: v[-1] for k, v in (await read_form_lists(request)).items()}
