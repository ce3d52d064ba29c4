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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from deepexec_sdk.retry import RetryPolicy, parse_retry_after
from deepexec_sdk.streaming import SSEDecoder

from ..domain import ErrorType
from .models import ModelSpec

log = logging.getLogger("deepexec_server.llm")

TokenCallback = Callable[[str], None]

#: How long ``close`` waits for in-flight embedded generations to notice they must stop.
CLOSE_JOIN_SECONDS = 5.0
#: llama.cpp's prompt cache in RAM per model; its default (8 GiB) is far above what we need.
EMBEDDED_CACHE_RAM_MIB = 64
#: Prompt tokens llama.cpp reads per step (its default is 2,048). A request is only told to stop
#: between two steps, so this bounds how long a cancelled prompt keeps the model busy: 64 tokens
#: are ~0.3 s on 2 idle cores. Prefill speed measured the same at 64, 128, 256 and 2,048.
EMBEDDED_BATCH_TOKENS = 64
#: Seconds to wait for the embedded model's tokenizer (a loopback request, ~10 ms) at submit.
EMBEDDED_COUNT_TIMEOUT_SECONDS = 2.0
#: How long a cancelled embedded generation waits for llama.cpp to let go of the request (one
#: batch, normally well under a second) before giving up on it; below the engine's grace after a
#: job's time limit, so a timed-out job still ends with its own outcome.
EMBEDDED_RELEASE_SECONDS = 3.0


#: Retries of one OpenAI-compatible request (after the first attempt): the SDK's policy. A
#: wait that the server asks for past the cap, or that would not end within the job's time,
#: gives up instead.
RETRY_POLICY = RetryPolicy(max_retries=3, give_up_past_cap=True)
MAX_ATTEMPTS = RETRY_POLICY.max_retries + 1
#: Seconds to wait for a TCP connection to an OpenAI-compatible server.
CONNECT_TIMEOUT_SECONDS = 10.0


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


class BackendError(Exception):
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


# --- the streaming chat format (pure) ---------------------------------------------------------


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


def _int_or_none(value: Any) -> int | None:
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
                error_prompt_tokens=_int_or_none(error.get("n_prompt_tokens")),
                error_context_length=_int_or_none(error.get("n_ctx")),
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
    prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
    return ChunkInfo(
        texts=tuple(texts),
        finish_reason=finish,
        # llama.cpp's progress chunks say the prompt's size before the first token.
        prompt_tokens=prompt_tokens
        if prompt_tokens is not None
        else _int_or_none(progress.get("total")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
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


async def _wait_or_cancel(work: asyncio.Future[Any], cancel_event: asyncio.Event) -> bool:
    """Wait for ``work`` or ``cancel_event``; True when cancelled first."""
    if cancel_event.is_set():
        return True
    waiter = asyncio.ensure_future(cancel_event.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return not work.done()


# --- failures and retries (pure) --------------------------------------------------------------

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


# --- embedded llama.cpp -----------------------------------------------------------------------


class EmbeddedBackend:
    """A GGUF model run in-process by llama.cpp (``xllamacpp``), loaded once, shared by jobs.

    ``n_parallel`` generations run at once (continuous batching), each with ``context_length``
    tokens of context. Loading happens on a thread, so it is independent of any event loop.
    xllamacpp also opens an HTTP listener on 127.0.0.1; a random API key we never hand out
    keeps it closed to other local users.
    """

    def __init__(
        self, spec: ModelSpec, *, threads: int, parallel: int, context_length: int | None = None
    ) -> None:
        if spec.path is None:
            raise BackendError(f"model {spec.name!r} has no GGUF file")
        self.spec = spec
        self.threads = max(1, threads)
        self.parallel = max(1, parallel)
        self.context_length = context_length or spec.context_length
        self._server: Any = None
        self._load: concurrent.futures.Future[Any] | None = None
        self._lock = threading.Lock()
        self._active: set[threading.Event] = set()
        self._threads: set[threading.Thread] = set()
        self._api_key = secrets.token_urlsafe(32)
        self._http: httpx.AsyncClient | None = None

    # loading

    def _build_params(self) -> Any:
        import xllamacpp as xlc

        params = xlc.CommonParams()
        params.model.path = self.spec.path
        # llama.cpp splits n_ctx evenly between the parallel slots.
        params.n_ctx = self.context_length * self.parallel
        params.n_parallel = self.parallel
        params.n_batch = EMBEDDED_BATCH_TOKENS
        params.cpuparams.n_threads = self.threads
        params.cpuparams_batch.n_threads = self.threads
        params.n_threads_http = 1
        params.cache_ram_mib = EMBEDDED_CACHE_RAM_MIB
        params.ui = False
        params.endpoint_slots = False
        params.verbosity = 0
        params.api_keys = [self._api_key]
        return params

    def _load_blocking(self) -> Any:
        import xllamacpp as xlc

        started = time.monotonic()
        try:
            server = xlc.Server(self._build_params())
        except Exception as exc:
            raise BackendError(f"could not load model {self.spec.name!r}: {exc}") from exc
        log.info(
            "model %s loaded from %s in %.2f s (%d parallel, %d threads)",
            self.spec.name,
            self.spec.path,
            time.monotonic() - started,
            self.parallel,
            self.threads,
        )
        return server

    def begin_loading(self) -> concurrent.futures.Future[Any]:
        """Start loading on a thread unless already started; the future holds the server."""
        with self._lock:
            if self._load is None:
                future: concurrent.futures.Future[Any] = concurrent.futures.Future()
                # Running futures cannot be cancelled: a caller that gives up waiting (its
                # task cancelled) must not cancel the load for everyone else.
                future.set_running_or_notify_cancel()

                def load() -> None:
                    try:
                        self._server = self._load_blocking()
                        future.set_result(self._server)
                    except BaseException as exc:
                        future.set_exception(exc)

                threading.Thread(target=load, name=f"load-{self.spec.name}", daemon=True).start()
                self._load = future
            return self._load

    @property
    def loaded(self) -> bool:
        """True once the model is in memory."""
        return self._server is not None

    async def start(self) -> None:
        """Load the model (once); returns when it is ready, raises ``BackendError`` if not."""
        await asyncio.wrap_future(self.begin_loading())

    # generating

    def _run_blocking(
        self,
        server: Any,
        payload: dict[str, Any],
        stop: threading.Event,
        deliver: Callable[[Any], None],
    ) -> None:
        def callback(chunk: Any) -> bool:
            if stop.is_set():
                return True  # tells llama.cpp to stop generating for this request
            try:
                deliver(chunk)
            except RuntimeError:  # the event loop is gone
                stop.set()
                return True
            return False

        answer = server.handle_chat_completions(payload, callback)
        # Without streaming output (e.g. a request refused before generation) the answer
        # comes back as the return value instead.
        if isinstance(answer, Mapping) and "error" in answer and not stop.is_set():
            deliver(answer)

    async def generate(
        self, request: GenerationRequest, on_token: TokenCallback, cancel_event: asyncio.Event
    ) -> GenerationResult:
        """Run one chat completion on the embedded model; see ``Backend.generate``."""
        acc = StreamAccumulator(on_token)
        load = asyncio.wrap_future(self.begin_loading())
        if await _wait_or_cancel(load, cancel_event):
            return acc.result(cancelled=True)
        server = load.result()
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_running_or_notify_cancel()
        payload = chat_payload(request, self.spec)
        # A chunk after each batch of prompt tokens: the callback's chance to stop a prefill.
        payload["return_progress"] = True

        def deliver(chunk: Any) -> None:
            loop.call_soon_threadsafe(acc.feed, chunk)

        def run() -> None:
            try:
                self._run_blocking(server, payload, stop, deliver)
                done.set_result(None)
            except BaseException as exc:
                done.set_exception(exc)
            finally:
                self._active.discard(stop)
                self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"gen-{self.spec.name}", daemon=True)
        self._active.add(stop)
        self._threads.add(thread)
        thread.start()
        work = asyncio.wrap_future(done)
        try:
            if await _wait_or_cancel(work, cancel_event):
                stop.set()
                result = acc.result(cancelled=True)
                await self._released(work)
                return result
            try:
                work.result()
            except Exception as exc:
                raise BackendError(f"model {self.spec.name!r} failed: {exc}") from exc
            if acc.error is not None:
                raise model_error(acc.error, acc.error_info)
            return acc.result()
        finally:
            # Also reached when this coroutine itself is cancelled: never leave a generation
            # running for nobody.
            stop.set()
            acc.closed = True

    async def count_prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> int | None:
        """Count with llama.cpp's own chat template and tokenizer, through the server's loopback
        listener (xllamacpp has no in-process call for it); None while the model is not loaded
        (a submit never waits for a load) or when the count fails."""
        server = self._server
        if server is None:
            return None
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=server.listening_address,
                headers={"Authorization": f"Bearer {self._api_key}"},
                timeout=EMBEDDED_COUNT_TIMEOUT_SECONDS,
            )
        try:
            resp = await self._http.post(
                "/v1/chat/completions/input_tokens", json={"messages": [dict(m) for m in messages]}
            )
            resp.raise_for_status()
            count = resp.json().get("input_tokens")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("model %s could not count a prompt's tokens: %s", self.spec.name, exc)
            return None
        return _int_or_none(count)

    async def _released(self, work: asyncio.Future[None]) -> None:
        """Wait (bounded) for a stopped generation's thread: it ends once llama.cpp has been
        told to drop the request, at its next batch of prompt tokens or its next token."""
        finished, _ = await asyncio.wait({work}, timeout=EMBEDDED_RELEASE_SECONDS)
        if not finished:
            log.warning(
                "model %s still busy with a cancelled request after %.0f s",
                self.spec.name,
                EMBEDDED_RELEASE_SECONDS,
            )

    async def close(self) -> None:
        """Stop in-flight generations, wait briefly for their threads, drop the model."""
        for stop in list(self._active):
            stop.set()
        threads = list(self._threads)

        def join() -> None:
            deadline = time.monotonic() + CLOSE_JOIN_SECONDS
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))

        if threads:
            await asyncio.to_thread(join)
        if self._load is not None and not self._load.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.wrap_future(self._load), CLOSE_JOIN_SECONDS)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        # xllamacpp frees the model and stops its listener when the Server is released.
        self._server = None
        self._load = None


# --- OpenAI-compatible HTTP -------------------------------------------------------------------


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
                if await _wait_or_cancel(work, cancel_event):
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
            if await _sleep_or_cancel(delay, cancel_event):
                return acc.result(cancelled=True)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


async def _sleep_or_cancel(delay: float, cancel_event: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds; True when ``cancel_event`` was set first."""
    sleeper = asyncio.ensure_future(asyncio.sleep(delay))
    try:
        return await _wait_or_cancel(sleeper, cancel_event)
    finally:
        sleeper.cancel()


def _error_message(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:300] or "(empty body)"
    err = doc.get("error") if isinstance(doc, Mapping) else None
    if isinstance(err, Mapping) and err.get("message"):
        return str(err["message"])[:300]
    return body[:300]


def make_backend(
    spec: ModelSpec, *, env: Mapping[str, str], threads: int, parallel: int
) -> Backend:
    """The backend for ``spec``: embedded llama.cpp for local GGUF files, HTTP otherwise."""
    if spec.backend == "openai":
        key = env.get(spec.api_key_env) if spec.api_key_env else None
        return OpenAIBackend(spec, key or None)
    return EmbeddedBackend(spec, threads=threads, parallel=parallel)
