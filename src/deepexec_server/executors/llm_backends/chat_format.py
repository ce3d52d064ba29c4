"""OpenAI's streaming chat format, which both backends speak (pure): the request body,
reading a chunk, and accumulating chunks into a result."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..models import ModelSpec
from .base import GenerationRequest, GenerationResult, TokenCallback


def chat_payload(request: GenerationRequest, spec: ModelSpec) -> dict[str, Any]:
    """The OpenAI-style streaming request body for ``request`` on ``spec``'s model."""
    payload: dict[str, Any] = dict(spec.default_params)
    payload.update(
        {
            "model": spec.model_id,
            "messages": [dict(m) for m in request.messages],
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.stop:
        payload["stop"] = list(request.stop)
    if request.seed is not None:
        payload["seed"] = request.seed
    return payload


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkInfo:
    """What one ``chat.completion.chunk`` says."""

    texts: tuple[str, ...] = ()
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_second: float | None = None
    error: str | None = None
    #: llama.cpp's ``n_prompt_tokens`` and ``n_ctx`` of an ``exceed_context_size_error``.
    error_prompt_tokens: int | None = None
    error_context_length: int | None = None


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_chunk(chunk: Any) -> ChunkInfo:
    """Read one streamed chunk (or an ``{"error": ...}`` object) of either backend."""
    if not isinstance(chunk, Mapping):
        return ChunkInfo(error=f"unexpected chunk from the model: {str(chunk)[:200]}")
    error = chunk.get("error")
    if error is not None:
        if isinstance(error, Mapping):
            return ChunkInfo(
                error=str(error.get("message") or error),
                error_prompt_tokens=int_or_none(error.get("n_prompt_tokens")),
                error_context_length=int_or_none(error.get("n_ctx")),
            )
        return ChunkInfo(error=str(error))
    texts: list[str] = []
    finish: str | None = None
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, Mapping):
            continue
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, Mapping) else None
        if isinstance(content, str) and content:
            texts.append(content)
        if isinstance(choice.get("finish_reason"), str):
            finish = choice["finish_reason"]
    raw_usage, raw_timings = chunk.get("usage"), chunk.get("timings")
    raw_progress = chunk.get("prompt_progress")
    usage: Mapping[str, Any] = raw_usage if isinstance(raw_usage, Mapping) else {}
    timings: Mapping[str, Any] = raw_timings if isinstance(raw_timings, Mapping) else {}
    progress: Mapping[str, Any] = raw_progress if isinstance(raw_progress, Mapping) else {}
    tps = timings.get("predicted_per_second")
    prompt_tokens = int_or_none(usage.get("prompt_tokens"))
    return ChunkInfo(
        texts=tuple(texts),
        finish_reason=finish,
        # llama.cpp's progress chunks say the prompt's size before the first token.
        prompt_tokens=prompt_tokens
        if prompt_tokens is not None
        else int_or_none(progress.get("total")),
        completion_tokens=int_or_none(usage.get("completion_tokens")),
        tokens_per_second=float(tps) if isinstance(tps, int | float) and tps > 0 else None,
    )


def parse_sse_data(data: str) -> Any:
    """The JSON of an SSE event's ``data`` (every ``data:`` line of the event, joined); the
    string ``"[DONE]"`` at the end of a stream."""
    data = data.strip()
    if data == "[DONE]":
        return "[DONE]"
    try:
        return json.loads(data)
    except ValueError:
        return {"error": {"message": f"unreadable stream data: {data[:200]}"}}


class StreamAccumulator:
    """Collects chunks into a ``GenerationResult`` and forwards text to ``on_token``.

    Lives on the event loop; once ``closed`` it ignores late chunks (a generation that was
    cancelled may still deliver one or two from its thread).
    """

    def __init__(self, on_token: TokenCallback, clock: Callable[[], float] = time.monotonic):
        self._on_token = on_token
        self._clock = clock
        self.started = clock()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.parts: list[str] = []
        self.pieces = 0
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.tokens_per_second: float | None = None
        self.error: str | None = None
        self.error_info = ChunkInfo()
        self.closed = False

    def feed(self, chunk: Any) -> None:
        """Take one chunk."""
        if self.closed:
            return
        info = read_chunk(chunk)
        if info.error is not None:
            if self.error is None:
                self.error, self.error_info = info.error, info
            return
        for text in info.texts:
            now = self._clock()
            if self.first_token_at is None:
                self.first_token_at = now
            self.last_token_at = now
            self.parts.append(text)
            self.pieces += 1
            self._on_token(text)
        self.finish_reason = info.finish_reason or self.finish_reason
        if info.prompt_tokens is not None:
            self.prompt_tokens = info.prompt_tokens
        if info.completion_tokens is not None:
            self.completion_tokens = info.completion_tokens
        if info.tokens_per_second is not None:
            self.tokens_per_second = info.tokens_per_second

    def result(self, cancelled: bool = False) -> GenerationResult:
        """The generation so far; ``cancelled`` marks it stopped before its end."""
        self.closed = True
        completion = self.pieces if cancelled else (self.completion_tokens or self.pieces)
        tps = None if cancelled else self.tokens_per_second
        if tps is None and self.first_token_at is not None and self.last_token_at is not None:
            span = self.last_token_at - self.first_token_at
            tps = (self.pieces - 1) / span if span > 0 and self.pieces > 1 else None
        ttft = None
        if self.first_token_at is not None:
            ttft = round((self.first_token_at - self.started) * 1000, 1)
        return GenerationResult(
            text="".join(self.parts),
            finish_reason="cancelled" if cancelled else (self.finish_reason or "stop"),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            ttft_ms=ttft,
            tokens_per_second=round(tps, 1) if tps is not None else None,
        )
