"""The OpenAI-compatible backend: any server with ``/chat/completions``, streamed over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from deepexec_sdk.retry import parse_retry_after
from deepexec_sdk.streaming import SSEDecoder

from ..models import ModelSpec
from .base import (
    BackendError,
    GenerationRequest,
    GenerationResult,
    LLMErrorType,
    TokenCallback,
    sleep_or_cancel,
    wait_or_cancel,
)
from .chat_format import StreamAccumulator, chat_payload, parse_sse_data
from .failures import MAX_ATTEMPTS, http_error, model_error, retry_delay, time_left, transport_error

log = logging.getLogger("deepexec_server.llm")

#: Seconds to wait for a TCP connection to an OpenAI-compatible server.
CONNECT_TIMEOUT_SECONDS = 10.0


class OpenAIBackend:
    """Any server with an OpenAI-compatible ``/chat/completions`` (DeepSeek, vLLM, SGLang,
    Ollama, llama.cpp's server): streamed over HTTP with httpx, transient failures retried.

    ``sleep`` waits between attempts and returns True when ``cancel_event`` interrupted it;
    ``jitter`` draws the random part of the backoff. Tests may replace either.
    """

    def __init__(
        self,
        spec: ModelSpec,
        api_key: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not spec.base_url:
            raise BackendError(f"model {spec.name!r} has no base_url")
        self.spec = spec
        self._jitter = jitter
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=spec.base_url,
            headers=headers,
            timeout=self._timeout(None),
            transport=transport,
        )

    def _timeout(self, left: float | None) -> httpx.Timeout:
        """Per-attempt limits: the model's own, shortened to the time the job has left."""
        silence = self.spec.request_timeout
        connect = CONNECT_TIMEOUT_SECONDS
        if left is not None:
            silence, connect = min(silence, left), min(connect, left)
        return httpx.Timeout(silence, connect=connect)

    async def start(self) -> None:
        """Nothing to prepare: connections open on first use."""

    async def count_prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> int | None:
        """Unknown before the request: OpenAI-compatible servers have no common way to count."""
        return None

    async def _stream(
        self, payload: dict[str, Any], acc: StreamAccumulator, timeout: httpx.Timeout
    ) -> None:
        where = self.spec.base_url or self.spec.name
        try:
            async with self._client.stream(
                "POST", "/chat/completions", json=payload, timeout=timeout
            ) as resp:
                if resp.status_code >= 400:
                    body = (await resp.aread()).decode("utf-8", errors="replace")
                    raise http_error(
                        resp.status_code,
                        _error_message(body),
                        where,
                        parse_retry_after(resp.headers.get("retry-after"), datetime.now(UTC)),
                    )
                decoder = SSEDecoder()
                async for chunk in resp.aiter_bytes():
                    for event in decoder.feed(chunk):
                        data = parse_sse_data(event.data)
                        if data == "[DONE]":
                            return
                        acc.feed(data)
        except httpx.HTTPError as exc:
            raise transport_error(exc, where) from exc

    def _attempt(
        self, payload: dict[str, Any], acc: StreamAccumulator, deadline: float | None
    ) -> asyncio.Future[None]:
        left = time_left(deadline, time.monotonic())
        if left is not None and left <= 0:
            raise BackendError(
                f"{self.spec.base_url} did not answer before the job's time ran out",
                LLMErrorType.UPSTREAM_TIMEOUT,
            )
        return asyncio.ensure_future(self._stream(payload, acc, self._timeout(left)))

    async def generate(
        self, request: GenerationRequest, on_token: TokenCallback, cancel_event: asyncio.Event
    ) -> GenerationResult:
        """Stream one chat completion, retrying transient failures before the first token;
        cancelling closes the HTTP stream."""
        acc = StreamAccumulator(on_token)
        payload = chat_payload(request, self.spec)
        attempt = 0
        while True:
            work = self._attempt(payload, acc, request.deadline)
            try:
                if await wait_or_cancel(work, cancel_event):
                    return acc.result(cancelled=True)
                error = work.exception()
            finally:
                if not work.done():
                    work.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await work
            if error is None:
                if acc.error is not None:
                    acc.closed = True
                    raise model_error(acc.error, acc.error_info)
                return acc.result()
            if not isinstance(error, BackendError):
                acc.closed = True
                raise error
            delay = None
            if acc.pieces == 0:  # after the first token a retry would repeat text
                left = time_left(request.deadline, time.monotonic())
                delay = retry_delay(error, attempt, jitter=self._jitter(), time_left=left)
            if delay is None:
                acc.closed = True
                if attempt > 0:
                    error.message = f"{error.message} (after {attempt + 1} attempts)"
                    error.args = (error.message,)
                raise error
            attempt += 1
            log.info(
                "model %s: %s; retry %d/%d in %.2f s",
                self.spec.name,
                error.message,
                attempt,
                MAX_ATTEMPTS - 1,
                delay,
            )
            if await sleep_or_cancel(delay, cancel_event):
                return acc.result(cancelled=True)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def _error_message(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:300] or "(empty body)"
    err = doc.get("error") if isinstance(doc, Mapping) else None
    if isinstance(err, Mapping) and err.get("message"):
        return str(err["message"])[:300]
    return body[:300]
