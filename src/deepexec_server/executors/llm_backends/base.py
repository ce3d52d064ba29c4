"""The types every backend shares: the request, the result, the error and the
``Backend`` protocol; and waiting on work or a cancel event."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ...domain import ErrorType
from ...errors import DeepExecError

TokenCallback = Callable[[str], None]


class LLMErrorType:
    """``error.type`` values of FAILED ``text_generation`` jobs (besides ``timeout``); the
    strings are the domain's (``domain.ErrorType``), named here for the backends."""

    #: The prompt (plus ``max_tokens``) does not fit the model's context window.
    CONTEXT_LENGTH_EXCEEDED = ErrorType.CONTEXT_LENGTH_EXCEEDED
    #: The upstream server refused our API key (HTTP 401/403).
    UPSTREAM_AUTH = ErrorType.UPSTREAM_AUTH
    #: The upstream server kept answering 429 (rate limit or quota) through every retry.
    UPSTREAM_RATE_LIMITED = ErrorType.UPSTREAM_RATE_LIMITED
    #: The upstream server answered 5xx, was unreachable, or broke the stream.
    UPSTREAM_ERROR = ErrorType.UPSTREAM_ERROR
    #: The upstream server stayed silent longer than its timeout.
    UPSTREAM_TIMEOUT = ErrorType.UPSTREAM_TIMEOUT
    #: Anything else the model or its server refused or failed at.
    MODEL_ERROR = ErrorType.MODEL_ERROR


class BackendError(DeepExecError):
    """The model backend failed (could not load, refused the request, connection lost).

    ``error_type`` is an ``LLMErrorType``; ``retryable`` marks a transient failure and
    ``retry_after`` the seconds the server asked us to wait before trying again. A context
    overflow carries the prompt's tokens and the context size when the backend said them.
    """

    def __init__(
        self,
        message: str,
        error_type: str = LLMErrorType.MODEL_ERROR,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        prompt_tokens: int | None = None,
        context_length: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.retryable = retryable
        self.retry_after = retry_after
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


@dataclasses.dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One chat completion to run. ``None`` leaves a parameter to the model's defaults."""

    messages: Sequence[Mapping[str, str]]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    #: ``time.monotonic()`` by which the backend must have given up (retries included), so
    #: that the job can still say why; None: no limit but cancellation.
    deadline: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class GenerationResult:
    """What a generation produced. ``prompt_tokens`` is None when the backend had not said
    yet (a generation cancelled early, or a remote one cancelled before its end)."""

    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int
    ttft_ms: float | None
    tokens_per_second: float | None


class Backend(Protocol):
    """Generates text for one model."""

    async def start(self) -> None:
        """Get ready (load weights...); returns once ready. Safe to call many times."""

    async def count_prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> int | None:
        """The prompt's tokens in the model's chat template, when that is cheap to know now;
        None otherwise (the generation then reports an overflow itself)."""

    async def generate(
        self, request: GenerationRequest, on_token: TokenCallback, cancel_event: asyncio.Event
    ) -> GenerationResult:
        """Run ``request``, calling ``on_token`` with each piece of text as it arrives.

        Returns promptly once ``cancel_event`` is set (``finish_reason="cancelled"``); raises
        ``BackendError`` when the backend fails.
        """

    async def close(self) -> None:
        """Stop in-flight generations and release the model."""


async def wait_or_cancel(work: asyncio.Future[Any], cancel_event: asyncio.Event) -> bool:
    """Wait for ``work`` or ``cancel_event``; True when cancelled first."""
    if cancel_event.is_set():
        return True
    waiter = asyncio.ensure_future(cancel_event.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return not work.done()


async def sleep_or_cancel(delay: float, cancel_event: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds; True when ``cancel_event`` was set first."""
    sleeper = asyncio.ensure_future(asyncio.sleep(delay))
    try:
        return await wait_or_cancel(sleeper, cancel_event)
    finally:
        sleeper.cancel()
