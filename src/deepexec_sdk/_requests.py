"""One logical request as data, and the ``data`` of the two job types the clients submit."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from .job_data import CodeExecutionData, TextGenerationData
from .types import MAX_BATCH_JOBS

T = TypeVar("T", bound=BaseModel)


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


def batch_items(jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The items of a batch submit: each job's fields as given (``name``, ``job_type``,
    ``data`` and optionally ``timeout``, ``priority``, ``tags``, ``idempotency_key``; the
    server validates them), with an idempotency key made for each that has none."""
    if isinstance(jobs, Mapping | str) or not isinstance(jobs, Sequence):
        raise TypeError("jobs must be a list of job mappings (name, job_type, data, ...)")
    if not 0 < len(jobs) <= MAX_BATCH_JOBS:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_JOBS} jobs, got {len(jobs)}")
    items = []
    for index, job in enumerate(jobs):
        if not isinstance(job, Mapping):
            raise TypeError(f"jobs[{index}] must be a mapping, got {type(job).__name__}")
        item = {k: _plain(v) for k, v in job.items()}
        if item.get("idempotency_key") is None:
            item["idempotency_key"] = f"sdk-{uuid.uuid4()}"
        items.append(item)
    return items


def format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def omit_none(**fields: Any) -> dict[str, Any]:
    """The fields whose value is not None, in order: optional values stay off the wire."""
    return {k: v for k, v in fields.items() if v is not None}


def _plain(value: Any) -> Any:
    """A mapping as a dict, any other sequence but a string as a list: JSON's shapes."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return value


def job_data(data_model: type[BaseModel], /, **fields: Any) -> dict[str, Any]:
    """The given (not None) ``fields`` of ``data_model``, as its wire JSON.

    Not validated here: the server checks them against the same model plus what only it knows
    (its languages, models and maxima), and answers a bad value with a 422 naming the field.
    """
    data = data_model.model_construct(**{k: _plain(v) for k, v in omit_none(**fields).items()})
    return data.model_dump(exclude_unset=True, warnings=False)


def code_execution_data(
    code: str,
    language: str,
    *,
    stdin: str | None,
    args: Sequence[str] | None,
    files: Mapping[str, str] | None,
    env: Mapping[str, str] | None,
    tests: Sequence[Mapping[str, Any]] | None = None,
    compare: str | None = None,
    float_tolerance: float | None = None,
    stop_on_failure: bool | None = None,
) -> dict[str, Any]:
    """The ``data`` of a ``code_execution`` job (``CodeExecutionData``): the parameters are its
    fields."""
    return job_data(CodeExecutionData, **locals())


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
    """The ``data`` of a ``text_generation`` job (``TextGenerationData``): the parameters are
    its fields."""
    return job_data(TextGenerationData, **locals())
