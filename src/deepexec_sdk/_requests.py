"""One logical request as data, and the ``data`` of the two job types the clients submit."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from .job_data import CodeExecutionData, TextGenerationData

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


def format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def omit_none(**fields: Any) -> dict[str, Any]:
    """The fields whose value is not None, in order: optional values stay off the wire."""
    return {k: v for k, v in fields.items() if v is not None}


def job_data(data_model: type[BaseModel], /, **fields: Any) -> dict[str, Any]:
    """The given (not None) ``fields`` of ``data_model``, as its wire JSON.

    Not validated here: the server checks them against the same model plus what only it knows
    (its languages, models and maxima), and answers a bad value with a 422 naming the field.
    """
    data = data_model.model_construct(**omit_none(**fields))
    return data.model_dump(exclude_unset=True, warnings=False)


def code_execution_data(
    code: str,
    language: str,
    *,
    stdin: str | None,
    args: Sequence[str] | None,
    files: Mapping[str, str] | None,
    env: Mapping[str, str] | None,
) -> dict[str, Any]:
    """The ``data`` of a ``code_execution`` job (``CodeExecutionData``)."""
    return job_data(
        CodeExecutionData,
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
    """The ``data`` of a ``text_generation`` job (``TextGenerationData``)."""
    return job_data(
        TextGenerationData,
        prompt=prompt,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop if stop is None or isinstance(stop, str) else list(stop),
        seed=seed,
        system=system,
    )
