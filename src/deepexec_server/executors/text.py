"""The ``text_generation`` executor: validate a chat request, generate with the model's backend,
stream the tokens, report the outcome.

Job data::

    {"prompt": "Explain quantum computing", "system": "Be brief.", "model": "smollm2",
     "max_tokens": 256, "temperature": 0.2, "top_p": 0.9, "stop": ["\\n\\n"], "seed": 7}

``prompt`` or ``messages`` (``[{"role": "system"|"user"|"assistant", "content": "..."}]``), not
both. ``model`` is resolved through the catalog (``models``) at submit time, so an unknown or
unconfigured model is a 422 before the job exists. Each generated piece of text is published as
``text`` output; progress is completion tokens over ``max_tokens``.

Result: ``text``, ``model``, ``finish_reason`` (``stop``, ``length``, ``cancelled`` when the
job was cancelled or timed out before the model finished, ``error`` when the backend failed),
``usage`` (``prompt_tokens``, None when the backend had not said it yet, and
``completion_tokens``), ``time_to_first_token_ms``, ``tokens_per_second``.

A FAILED job's ``error.type`` is ``timeout`` (the job's own limit), or one of ``LLMErrorType``:
``context_length_exceeded`` (the message names the prompt's tokens, ``max_tokens`` and the
model's context), ``upstream_auth``, ``upstream_rate_limited``, ``upstream_error``,
``upstream_timeout``, ``model_error``; the partial text is still in the result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from deepexec_sdk.job_data import MAX_TOKENS_LIMIT, TextGenerationData

from ..domain import ErrorType, JobError
from ..settings import Settings
from .base import ExecutionContext, JobDataError, ModelUnavailableError, Outcome
from .job_data import bad, parse_data
from .llm_backends import (
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
    LLMErrorType,
    make_backend,
)
from .models import ModelCatalog, ModelSpec

log = logging.getLogger("deepexec_server.llm")

#: Least time between two progress reports of one job.
PROGRESS_INTERVAL_SECONDS = 0.1
#: The backend gives up this long before the job's limit (at most ``DEADLINE_MARGIN_MAX``
#: seconds), so that a silent upstream is reported as ``upstream_timeout``, not ``timeout``.
DEADLINE_MARGIN_FRACTION = 0.1
DEADLINE_MARGIN_MAX = 1.0

#: ``error.type`` values of FAILED text jobs, besides ``timeout`` (see ``LLMErrorType``).
CONTEXT_LENGTH_EXCEEDED = LLMErrorType.CONTEXT_LENGTH_EXCEEDED
UPSTREAM_AUTH = LLMErrorType.UPSTREAM_AUTH
UPSTREAM_RATE_LIMITED = LLMErrorType.UPSTREAM_RATE_LIMITED
UPSTREAM_ERROR = LLMErrorType.UPSTREAM_ERROR
UPSTREAM_TIMEOUT = LLMErrorType.UPSTREAM_TIMEOUT
MODEL_ERROR = LLMErrorType.MODEL_ERROR


# --- validation (pure) ------------------------------------------------------------------------


def _max_tokens_error(value: object, spec: ModelSpec) -> JobDataError:
    limit = min(MAX_TOKENS_LIMIT, spec.context_length)
    why = f"must be an integer from 1 to {limit}"
    too_many = isinstance(value, int) and not isinstance(value, bool) and limit < value
    if too_many and limit < MAX_TOKENS_LIMIT:
        why += f" (the context length of model {spec.name!r})"
    return bad("max_tokens", why)


def validate_text_data(data: Any, catalog: ModelCatalog) -> dict[str, Any]:
    """Check and normalise ``text_generation`` data (``TextGenerationData``); raise
    ``JobDataError`` naming the field.

    The model is resolved here (``ModelUnavailableError`` for an unknown or unconfigured one)
    and stored under its canonical name; ``max_tokens`` must fit its context.
    """
    try:
        parsed = parse_data(TextGenerationData, data)
    except JobDataError as exc:
        if exc.details and exc.details[0]["loc"] == ["data", "max_tokens"]:
            # Name this host's bound: the model's context may be below the protocol's.
            model = data.get("model") if isinstance(data.get("model"), str) else None
            spec = catalog.resolve(model.strip() if model else None)
            raise _max_tokens_error(data.get("max_tokens"), spec) from None
        raise
    spec = catalog.resolve(parsed.model.strip() if parsed.model else None)
    if parsed.max_tokens > min(MAX_TOKENS_LIMIT, spec.context_length):
        raise _max_tokens_error(parsed.max_tokens, spec)
    out: dict[str, Any] = parsed.model_dump(mode="json", exclude_none=True)
    out["model"] = spec.name
    return out


def build_messages(data: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages of validated data: ``system`` first, then the prompt or messages."""
    messages: list[dict[str, str]] = []
    if data.get("system"):
        messages.append({"role": "system", "content": data["system"]})
    if "prompt" in data:
        messages.append({"role": "user", "content": data["prompt"]})
    else:
        messages.extend(dict(m) for m in data["messages"])
    return messages


def backend_deadline(started: float, timeout: float) -> float:
    """When the backend must give up for a job that started at ``started`` (monotonic)."""
    margin = min(DEADLINE_MARGIN_MAX, timeout * DEADLINE_MARGIN_FRACTION)
    return started + max(0.0, timeout - margin)


def build_request(data: Mapping[str, Any], deadline: float | None = None) -> GenerationRequest:
    """The backend request for validated data."""
    return GenerationRequest(
        messages=build_messages(data),
        max_tokens=int(data["max_tokens"]),
        temperature=data.get("temperature"),
        top_p=data.get("top_p"),
        stop=tuple(data.get("stop", ())),
        seed=data.get("seed"),
        deadline=deadline,
    )


# --- progress and results (pure) --------------------------------------------------------------


def token_progress(tokens: int, max_tokens: int) -> int:
    """Percent of ``max_tokens`` generated, 0-100."""
    return min(100, tokens * 100 // max(1, max_tokens))


def progress_due(last_percent: int | None, last_at: float | None, percent: int, now: float) -> bool:
    """Report when the percent changed and the last report is at least an interval old."""
    if percent == last_percent:
        return False
    return last_at is None or now - last_at >= PROGRESS_INTERVAL_SECONDS


def text_result(model: str, gen: GenerationResult) -> dict[str, Any]:
    """The job result for a generation."""
    return {
        "text": gen.text,
        "model": model,
        "finish_reason": gen.finish_reason,
        "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens},
        "time_to_first_token_ms": gen.ttft_ms,
        "tokens_per_second": gen.tokens_per_second,
    }


class _TokenSink:
    """Receives each piece of text: publishes it, counts it, reports throttled progress."""

    def __init__(
        self, ctx: ExecutionContext, max_tokens: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ctx = ctx
        self._max = max_tokens
        self._clock = clock
        self.parts: list[str] = []
        self._last_percent: int | None = None
        self._last_at: float | None = None

    def __call__(self, text: str) -> None:
        self.parts.append(text)
        self._ctx.emit_output("text", text)
        n = len(self.parts)
        percent, now = token_progress(n, self._max), self._clock()
        if progress_due(self._last_percent, self._last_at, percent, now):
            self._last_percent, self._last_at = percent, now
            self._ctx.report_progress(percent, f"{n}/{self._max} tokens")

    def failed(self, prompt_tokens: int | None) -> GenerationResult:
        """What was generated before a failure."""
        text = "".join(self.parts)
        return GenerationResult(text, "error", prompt_tokens, len(self.parts), None, None)


def failure_message(exc: BackendError, spec: ModelSpec, max_tokens: int) -> str:
    """The job's ``error.message`` for a backend failure; a context overflow names the limits
    (what the backend said, else the catalog's context length)."""
    if exc.error_type != CONTEXT_LENGTH_EXCEEDED:
        return exc.message
    return context_message(
        exc.prompt_tokens,
        max_tokens,
        exc.context_length or spec.context_length,
        spec.name,
        exc.message if spec.backend == "openai" else None,
    )


def context_message(
    prompt_tokens: int | None,
    max_tokens: int,
    context_length: int,
    model: str,
    upstream: str | None = None,
) -> str:
    """``the prompt (2100 tokens) plus max_tokens (256) exceeds the context of model 'x'
    (2048 tokens)...``."""
    prompt = "the prompt" if prompt_tokens is None else f"the prompt ({prompt_tokens} tokens)"
    msg = (
        f"{prompt} plus max_tokens ({max_tokens}) exceeds the context of model {model!r} "
        f"({context_length} tokens); shorten the prompt or lower max_tokens"
    )
    return f"{msg} ({upstream})" if upstream else msg


# --- the executor -----------------------------------------------------------------------------


class TextExecutor:
    """Runs ``text_generation`` jobs on the models of a ``ModelCatalog``.

    ``env`` is where API keys are read (default ``os.environ``); ``catalog`` replaces the one
    built from ``settings``.
    """

    job_type = "text_generation"

    def __init__(
        self,
        settings: Settings,
        *,
        env: Mapping[str, str] | None = None,
        catalog: ModelCatalog | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog or ModelCatalog.from_settings(settings, env)
        self._backends: dict[str, Backend] = {}

    def backend_for(self, spec: ModelSpec) -> Backend:
        """The (one, shared) backend of a model, created on first use."""
        backend = self._backends.get(spec.name)
        if backend is None:
            backend = make_backend(
                spec,
                env=self.catalog.env,
                threads=self.settings.llm_threads,
                parallel=self.settings.llm_parallel,
            )
            self._backends[spec.name] = backend
        return backend

    async def start(self) -> None:
        """Load the default model before the server serves. Loading a GGUF holds the GIL for
        its whole duration (0.3-2 s measured), which would freeze the event loop, so it happens
        here, at start, never in the middle of serving requests or renewing job leases."""
        spec = self.catalog.lookup(None)
        if spec is None or spec.backend == "openai":
            return
        missing = self.catalog.missing(spec)
        if missing:
            log.warning("default model %s is not usable: %s", spec.name, [r.fix for r in missing])
            return
        try:
            await self.backend_for(spec).start()
        except Exception as exc:  # jobs will report it as model_error
            log.warning("could not load model %s: %s", spec.name, exc)

    async def close(self) -> None:
        """Stop the warm-up and every backend."""
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            try:
                await backend.close()
            except Exception:
                log.exception("closing a model backend failed")

    def validate(self, data: Mapping[str, Any], timeout: int) -> dict[str, Any]:
        """See ``validate_text_data``."""
        return validate_text_data(data, self.catalog)

    async def admit(self, data: Mapping[str, Any]) -> None:
        """Refuse a prompt that, with ``max_tokens``, cannot fit the model's context, when the
        model's backend can count it cheaply (the embedded model once loaded). Otherwise the
        job itself fails with ``context_length_exceeded``."""
        spec = self.catalog.resolve(data.get("model"))
        backend = self._backends.get(spec.name)
        if backend is None:  # never loaded: a submit does not wait for a model to load
            return
        prompt_tokens = await backend.count_prompt_tokens(build_messages(data))
        max_tokens = int(data["max_tokens"])
        if prompt_tokens is not None and prompt_tokens + max_tokens > spec.context_length:
            msg = context_message(prompt_tokens, max_tokens, spec.context_length, spec.name)
            field = "prompt" if "prompt" in data else "messages"
            raise JobDataError(
                f"data: {msg}",
                details=[{"loc": ["data", k], "msg": msg} for k in (field, "max_tokens")],
            )

    def describe(self) -> dict[str, Any]:
        """The models of this server and which of them are usable."""
        return {"default_model": self.catalog.default_model, "models": self.catalog.describe()}

    async def execute(self, data: dict[str, Any], ctx: ExecutionContext) -> Outcome:
        """Generate; end at the model's stop, ``max_tokens``, cancellation or the timeout."""
        started = time.monotonic()
        try:
            spec = self.catalog.resolve(data.get("model"))
        except ModelUnavailableError as exc:
            return Outcome(None, JobError(ErrorType.MODEL_ERROR, exc.message))
        request = build_request(data, backend_deadline(started, ctx.timeout))
        sink = _TokenSink(ctx, request.max_tokens)
        stop = asyncio.Event()
        generation = asyncio.ensure_future(self.backend_for(spec).generate(request, sink, stop))
        cancel_wait = asyncio.ensure_future(ctx.cancel_requested.wait())
        remaining = max(0.0, ctx.timeout - (time.monotonic() - started))
        try:
            await asyncio.wait(
                {generation, cancel_wait}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            cancel_wait.cancel()
            if not generation.done():
                stop.set()
        timed_out = not generation.done() and not ctx.cancel_requested.is_set()
        try:
            gen = await generation
        except BackendError as exc:
            return Outcome(
                text_result(spec.name, sink.failed(exc.prompt_tokens)),
                JobError(exc.error_type, failure_message(exc, spec, request.max_tokens)),
            )
        result = text_result(spec.name, gen)
        if gen.finish_reason == "cancelled":
            if ctx.cancel_requested.is_set() and not timed_out:
                return Outcome(result, canceled=True)
            return Outcome(
                result,
                JobError(
                    ErrorType.TIMEOUT,
                    f"generation exceeded the {ctx.timeout:g} s time limit after "
                    f"{gen.completion_tokens} tokens",
                ),
            )
        ctx.report_progress(100, f"{gen.completion_tokens} tokens")
        return Outcome(result)
