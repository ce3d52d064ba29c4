"""A job's ``data`` checked against its model from the SDK (``deepexec_sdk.job_data``), and the
422 naming the bad field: shared by the executors, which add only the host's own checks."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from deepexec_sdk.job_data import job_data_problem

from .base import JobDataError

M = TypeVar("M", bound=BaseModel)


def bad(field: str | list[str | int], msg: str) -> JobDataError:
    """A ``JobDataError`` naming ``data.<field>``."""
    loc: list[str | int] = ["data", *(field if isinstance(field, list) else [field])]
    where = ".".join(str(p) for p in loc)
    return JobDataError(f"{where}: {msg}", details=[{"loc": loc, "msg": msg}])


def parse_data(model: type[M], data: object, prefix: tuple[str, ...] = ()) -> M:
    """``data`` (``data.<prefix>`` of a job) as ``model``, or the ``JobDataError`` naming
    its first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, details = job_data_problem(exc, model.model_fields, prefix)
        raise JobDataError(message, details) from None
