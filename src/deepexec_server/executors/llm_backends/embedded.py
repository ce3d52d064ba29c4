"""The embedded backend: a GGUF model run in-process by llama.cpp (``xllamacpp``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from ..models import ModelSpec
from .base import BackendError, GenerationRequest, GenerationResult, TokenCallback, wait_or_cancel
from .chat_format import StreamAccumulator, chat_payload, int_or_none
from .failures import model_error

log = logging.getLogger("deepexec_server.llm")

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
        if await wait_or_cancel(load, cancel_event):
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
            if await wait_or_cancel(work, cancel_event):
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
        return int_or_none(count)

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
