"""What a failure of a backend becomes (pure): the ``BackendError`` for an HTTP answer, a
transport error or a model's own complaint, a context overflow with its numbers, and whether
and when to retry."""

from __future__ import annotations

import re

import httpx

from deepexec_sdk.retry import RetryPolicy

from .base import BackendError, LLMErrorType
from .chat_format import ChunkInfo

#: Retries of one OpenAI-compatible request (after the first attempt): the SDK's policy. A
#: wait that the server asks for past the cap, or that would not end within the job's time,
#: gives up instead.
RETRY_POLICY = RetryPolicy(max_retries=3, give_up_past_cap=True)
MAX_ATTEMPTS = RETRY_POLICY.max_retries + 1

_CONTEXT_MARKERS = (
    "context length",
    "context size",
    "context window",
    "context_length_exceeded",
    "exceed_context_size",
    "maximum context",
    "too many tokens",
)


def is_context_overflow(message: str) -> bool:
    """Whether an error message (llama.cpp, OpenAI, DeepSeek, vLLM...) says the prompt does
    not fit the model's context window."""
    lowered = message.lower()
    return any(marker in lowered for marker in _CONTEXT_MARKERS)


#: llama.cpp: "request (3031 tokens) exceeds the available context size (2048 tokens)".
_LLAMA_OVERFLOW = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+)")
#: OpenAI, DeepSeek, vLLM: "maximum context length is 65536 tokens. However, you requested
#: 70000 tokens (69000 in the messages, 1000 in the completion)".
_OPENAI_CONTEXT = re.compile(r"maximum context length is (\d+)")
_OPENAI_PROMPT = re.compile(r"\((\d+) in the messages")


def overflow_numbers(message: str) -> tuple[int | None, int | None]:
    """``(prompt_tokens, context_length)`` as far as a context-overflow message says them."""
    found = _LLAMA_OVERFLOW.search(message)
    if found:
        return int(found[1]), int(found[2])
    context, prompt = _OPENAI_CONTEXT.search(message), _OPENAI_PROMPT.search(message)
    return (int(prompt[1]) if prompt else None), (int(context[1]) if context else None)


def context_overflow(
    message: str, prompt_tokens: int | None = None, context_length: int | None = None
) -> BackendError:
    """A ``context_length_exceeded`` error, with the numbers the backend gave (as fields, or
    else in its message)."""
    said_prompt, said_context = overflow_numbers(message)
    return BackendError(
        message,
        LLMErrorType.CONTEXT_LENGTH_EXCEEDED,
        prompt_tokens=said_prompt if prompt_tokens is None else prompt_tokens,
        context_length=said_context if context_length is None else context_length,
    )


def model_error(message: str, info: ChunkInfo | None = None) -> BackendError:
    """The error for a failure the model reported itself (an ``error`` object or chunk)."""
    if is_context_overflow(message):
        if info is None:
            return context_overflow(message)
        return context_overflow(message, info.error_prompt_tokens, info.error_context_length)
    return BackendError(message, LLMErrorType.MODEL_ERROR)


def http_error(
    status: int, message: str, where: str, retry_after: float | None = None
) -> BackendError:
    """The error for an HTTP error answer of an OpenAI-compatible server."""
    text = f"{where} answered {status}: {message}"
    if status in (401, 403):
        return BackendError(text, LLMErrorType.UPSTREAM_AUTH)
    if status == 429:
        return BackendError(
            text, LLMErrorType.UPSTREAM_RATE_LIMITED, retryable=True, retry_after=retry_after
        )
    if status == 408:
        return BackendError(text, LLMErrorType.UPSTREAM_TIMEOUT, retryable=True)
    if status >= 500:
        return BackendError(
            text, LLMErrorType.UPSTREAM_ERROR, retryable=True, retry_after=retry_after
        )
    if is_context_overflow(message):
        return context_overflow(text)
    return BackendError(text, LLMErrorType.MODEL_ERROR)


def transport_error(exc: httpx.HTTPError, where: str) -> BackendError:
    """The error for a failed connection or a silent server; all of them are transient."""
    detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, httpx.TimeoutException):
        return BackendError(
            f"{where} did not answer in time ({detail})",
            LLMErrorType.UPSTREAM_TIMEOUT,
            retryable=True,
        )
    return BackendError(
        f"cannot reach {where} ({detail})", LLMErrorType.UPSTREAM_ERROR, retryable=True
    )


def retry_delay(
    error: BackendError, attempt: int, *, jitter: float, time_left: float | None
) -> float | None:
    """Seconds to wait before retrying after ``error`` on attempt ``attempt`` (0 = first), or
    None to give up: not transient, attempts used up, or the wait would not fit the time left.
    A ``Retry-After`` from the server wins over the backoff (``RETRY_POLICY``)."""
    if not error.retryable:
        return None
    return RETRY_POLICY.delay(
        attempt, jitter=jitter, retry_after=error.retry_after, time_left=time_left
    )


def time_left(deadline: float | None, now: float) -> float | None:
    """Seconds until ``deadline`` (never negative), None without one."""
    return None if deadline is None else max(0.0, deadline - now)
