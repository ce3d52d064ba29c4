"""Backends that generate text for a ``ModelSpec``: the embedded llama.cpp model and any
OpenAI-compatible server.

Both speak OpenAI's streaming chat format: the embedded one through ``xllamacpp``'s in-process
``Server.handle_chat_completions(request, callback)`` (the callback gets one
``chat.completion.chunk`` dict per token and stops generation by returning ``True``), the other
through ``POST {base_url}/chat/completions`` with ``"stream": true`` (server-sent events). So the
chunk reading (``read_chunk``) and the accumulation (``StreamAccumulator``) are shared and pure.

Cancellation: ``generate`` returns once ``cancel_event`` is set, with the partial text and
``finish_reason="cancelled"``. The OpenAI-compatible backend closes the HTTP stream, which ends
the generation server-side. The embedded model stops at its next callback: after the next token
(a few ms) or, while it is still reading the prompt (prefill, ~200-300 tokens/s on 2 cores), after
the next batch of ``EMBEDDED_BATCH_TOKENS`` prompt tokens, because every request asks llama.cpp
for ``return_progress`` chunks. ``generate`` returns only once llama.cpp has been told to drop the
request (its thread has ended), so a job's runner slot is not freed while llama.cpp still works
for it: a cancelled 2,000-token prompt costs the next job one batch, not the whole prefill.

Failures carry an ``error_type`` (``LLMErrorType``) that becomes the job's ``error.type``. The
OpenAI-compatible backend retries transient failures (connection errors, 429, 5xx, timeouts)
that happen before the first token, with capped exponential backoff and jitter, honouring
``Retry-After``, and never past the request's ``deadline``; after the first token a retry would
repeat text the client has already seen, so the failure ends the job with the partial text.

The modules: ``base`` (the shared types), ``chat_format`` (the streaming chat format, pure),
``failures`` (errors and retries, pure), ``embedded`` (llama.cpp) and ``openai_http`` (HTTP).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..models import ModelSpec
from .base import (
    Backend,
    BackendError,
    GenerationRequest,
    GenerationResult,
    LLMErrorType,
    TokenCallback,
)
from .chat_format import ChunkInfo, StreamAccumulator, chat_payload, parse_sse_data, read_chunk
from .embedded import (
    CLOSE_JOIN_SECONDS,
    EMBEDDED_BATCH_TOKENS,
    EMBEDDED_CACHE_RAM_MIB,
    EMBEDDED_COUNT_TIMEOUT_SECONDS,
    EMBEDDED_RELEASE_SECONDS,
    EmbeddedBackend,
)
from .failures import (
    MAX_ATTEMPTS,
    RETRY_POLICY,
    context_overflow,
    http_error,
    is_context_overflow,
    model_error,
    overflow_numbers,
    retry_delay,
    time_left,
    transport_error,
)
from .openai_http import CONNECT_TIMEOUT_SECONDS, OpenAIBackend

__all__ = [
    "CLOSE_JOIN_SECONDS",
    "CONNECT_TIMEOUT_SECONDS",
    "EMBEDDED_BATCH_TOKENS",
    "EMBEDDED_CACHE_RAM_MIB",
    "EMBEDDED_COUNT_TIMEOUT_SECONDS",
    "EMBEDDED_RELEASE_SECONDS",
    "MAX_ATTEMPTS",
    "RETRY_POLICY",
    "Backend",
    "BackendError",
    "ChunkInfo",
    "EmbeddedBackend",
    "GenerationRequest",
    "GenerationResult",
    "LLMErrorType",
    "OpenAIBackend",
    "StreamAccumulator",
    "TokenCallback",
    "chat_payload",
    "context_overflow",
    "http_error",
    "is_context_overflow",
    "make_backend",
    "model_error",
    "overflow_numbers",
    "parse_sse_data",
    "read_chunk",
    "retry_delay",
    "time_left",
    "transport_error",
]


def make_backend(
    spec: ModelSpec, *, env: Mapping[str, str], threads: int, parallel: int
) -> Backend:
    """The backend for ``spec``: embedded llama.cpp for local GGUF files, HTTP otherwise."""
    if spec.backend == "openai":
        key = env.get(spec.api_key_env) if spec.api_key_env else None
        return OpenAIBackend(spec, key or None)
    return EmbeddedBackend(spec, threads=threads, parallel=parallel)
