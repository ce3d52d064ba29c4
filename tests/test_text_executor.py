"""The text_generation executor against the real embedded model (SmolLM2-135M, llama.cpp) and a
real OpenAI-compatible server (llama.cpp's own HTTP server on loopback).

The fake ``ExecutionContext`` below is the engine's seam: it records what a job publishes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import itertools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from deepexec_server.executors.base import JobDataError, ModelUnavailableError, Outcome
from deepexec_server.executors.llm_backends import (
    MAX_ATTEMPTS,
    BackendError,
    http_error,
    overflow_numbers,
    parse_sse_data,
    read_chunk,
    retry_delay,
)
from deepexec_server.executors.models import EMBEDDED_MODEL
from deepexec_server.executors.text import (
    PROGRESS_INTERVAL_SECONDS,
    TextExecutor,
    build_messages,
    progress_due,
    token_progress,
)
from deepexec_server.settings import Settings
from tests.llama_server import OpenAIServer

pytestmark = [pytest.mark.timeout(60)]

LONG = "Write a very long story about a dragon who learns to bake bread."
SHORT = "Explain quantum computing in one sentence."


@dataclasses.dataclass
class FakeContext:
    """Records output and progress, and lets a test cancel."""

    timeout: float = 30.0
    job_id: str = "job-test"
    outputs: list[tuple[float, str, str]] = dataclasses.field(default_factory=list)
    progress: list[tuple[int | None, str | None]] = dataclasses.field(default_factory=list)
    cancel_requested: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def report_progress(self, progress: int | None, message: str | None = None) -> None:
        self.progress.append((progress, message))

    def emit_output(self, stream: str, text: str) -> None:
        self.outputs.append((time.monotonic(), stream, text))

    @property
    def text(self) -> str:
        return "".join(t for _, _, t in self.outputs)

    async def wait_for_tokens(self, n: int, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while len(self.outputs) < n:
            assert time.monotonic() < deadline, f"only {len(self.outputs)} tokens in {limit} s"
            await asyncio.sleep(0.002)


async def run(ex: TextExecutor, data: dict[str, Any], ctx: FakeContext | None = None) -> Outcome:
    return await ex.execute(ex.validate(data, 30), ctx or FakeContext())


# --- validation (pure, no model run) ----------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> TextExecutor:
    # Building the executor loads nothing: that happens in start() or the first job.
    return TextExecutor(Settings(), env={})


def test_validation_normalises_and_fills_defaults(validator: TextExecutor) -> None:
    assert validator.validate({"prompt": "hi"}, 30) == {
        "prompt": "hi",
        "model": EMBEDDED_MODEL,
        "max_tokens": 256,
    }
    data = {
        "messages": [{"role": "user", "content": "hi"}],
        "system": "be brief",
        "model": "smollm2",
        "max_tokens": 5,
        "temperature": 0,
        "top_p": 1,
        "stop": "\n",
        "seed": 7,
    }
    assert validator.validate(data, 30) == {
        **data,
        "model": EMBEDDED_MODEL,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["\n"],
    }


@pytest.mark.parametrize(
    ("data", "loc", "msg"),
    [
        ({"prompt": 3}, ["data", "prompt"], "must be a non-empty string"),
        ({"prompt": "  "}, ["data", "prompt"], "must be a non-empty string"),
        ({"messages": []}, ["data", "messages"], "non-empty list"),
        ({"messages": ["hi"]}, ["data", "messages", 0], "must be an object"),
        (
            {"messages": [{"role": "robot", "content": "x"}]},
            ["data", "messages", 0, "role"],
            "one of",
        ),
        (
            {"messages": [{"role": "user", "content": 1}]},
            ["data", "messages", 0, "content"],
            "string",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "name": "n"}]},
            ["data", "messages", 0],
            "name",
        ),
        ({"prompt": "x", "system": 1}, ["data", "system"], "must be a string"),
        ({"prompt": "x", "model": ""}, ["data", "model"], "non-empty string"),
        ({"prompt": "x", "max_tokens": 0}, ["data", "max_tokens"], "from 1 to 2048"),
        ({"prompt": "x", "max_tokens": 3000}, ["data", "max_tokens"], "context length"),
        ({"prompt": "x", "max_tokens": "9"}, ["data", "max_tokens"], "integer"),
        ({"prompt": "x", "max_tokens": True}, ["data", "max_tokens"], "integer"),
        ({"prompt": "x", "temperature": 2.5}, ["data", "temperature"], "[0, 2]"),
        ({"prompt": "x", "temperature": "hot"}, ["data", "temperature"], "number"),
        ({"prompt": "x", "temperature": float("nan")}, ["data", "temperature"], "number"),
        ({"prompt": "x", "top_p": 0}, ["data", "top_p"], "(0, 1]"),
        ({"prompt": "x", "top_p": 1.5}, ["data", "top_p"], "(0, 1]"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, ["data", "stop"], "at most 4"),
        ({"prompt": "x", "stop": [1]}, ["data", "stop"], "list of strings"),
        ({"prompt": "x", "stop": [""]}, ["data", "stop"], "1-200 characters"),
        ({"prompt": "x", "seed": -1}, ["data", "seed"], "integer from 0"),
        ({"prompt": "x", "seed": 1.5}, ["data", "seed"], "integer from 0"),
    ],
)
def test_each_bad_field_is_named(
    validator: TextExecutor, data: dict[str, Any], loc: list[Any], msg: str
) -> None:
    with pytest.raises(JobDataError) as info:
        validator.validate(data, 30)
    assert not isinstance(info.value, ModelUnavailableError)
    assert info.value.details[0]["loc"] == loc
    assert msg in info.value.details[0]["msg"]


def test_prompt_and_messages_are_exclusive(validator: TextExecutor) -> None:
    for data in ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, {}):
        with pytest.raises(JobDataError, match="exactly one of 'prompt'") as info:
            validator.validate(data, 30)
        assert [d["loc"] for d in info.value.details] == [["data", "prompt"], ["data", "messages"]]


def test_unknown_fields_are_named(validator: TextExecutor) -> None:
    with pytest.raises(JobDataError, match=r"unknown fields \['colour', 'n'\]") as info:
        validator.validate({"prompt": "x", "n": 2, "colour": "red"}, 30)
    assert [d["loc"] for d in info.value.details] == [["data", "colour"], ["data", "n"]]


def test_unknown_model_is_refused_at_submit_with_the_available_list(
    validator: TextExecutor,
) -> None:
    with pytest.raises(ModelUnavailableError, match=f"available models: {EMBEDDED_MODEL}$"):
        validator.validate({"prompt": "x", "model": "gpt-17"}, 30)


def test_deepseek_without_key_is_refused_naming_the_variable(validator: TextExecutor) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        validator.validate({"prompt": "x", "model": "deepseek-v3", "max_tokens": 300}, 30)
    assert (
        info.value.message == "model 'deepseek-v3' needs DEEPSEEK_API_KEY to be set on the server"
    )


def test_deepseek_with_key_accepts_long_outputs() -> None:
    ex = TextExecutor(Settings(), env={"DEEPSEEK_API_KEY": "sk-x"})
    data = ex.validate({"prompt": "x", "model": "deepseek-v3", "max_tokens": 4096}, 30)
    assert data["model"] == "deepseek-v3" and data["max_tokens"] == 4096


def test_describe_lists_the_models(validator: TextExecutor) -> None:
    described = validator.describe()
    assert described["default_model"] == EMBEDDED_MODEL
    names = {m["name"]: m["available"] for m in described["models"]}
    assert names == {EMBEDDED_MODEL: True, "deepseek-v3": False, "deepseek-r1": False}


def test_system_comes_first_in_the_chat() -> None:
    assert build_messages({"prompt": "p", "system": "s"}) == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "p"},
    ]
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert build_messages({"messages": msgs}) == msgs


def test_progress_is_throttled_and_only_reported_on_change() -> None:
    assert token_progress(3, 10) == 30 and token_progress(20, 10) == 100
    assert progress_due(None, None, 0, 0.0)
    assert not progress_due(10, 0.0, 10, 5.0)
    assert not progress_due(10, 1.0, 20, 1.0 + PROGRESS_INTERVAL_SECONDS / 2)
    assert progress_due(10, 1.0, 20, 1.0 + PROGRESS_INTERVAL_SECONDS)


def test_stream_chunks_are_read_from_either_backend() -> None:
    chunk = {"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]}
    assert read_chunk(chunk).texts == ("Hi",)
    final = {
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        "timings": {"predicted_per_second": 150.0},
    }
    info = read_chunk(final)
    assert (info.prompt_tokens, info.completion_tokens, info.tokens_per_second) == (5, 2, 150.0)
    assert read_chunk({"error": {"message": "too long"}}).error == "too long"
    overflow = read_chunk({"error": {"message": "m", "n_prompt_tokens": 3031, "n_ctx": 2048}})
    assert (overflow.error_prompt_tokens, overflow.error_context_length) == (3031, 2048)
    progress = {"choices": [{"delta": {"content": None}}], "prompt_progress": {"total": 40}}
    assert read_chunk(progress).texts == () and read_chunk(progress).prompt_tokens == 40
    assert overflow_numbers(
        "request (3031 tokens) exceeds the available context size (2048 tokens), try increasing it"
    ) == (3031, 2048)
    assert overflow_numbers(
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
        "(8000 in the messages, 1000 in the completion)."
    ) == (8000, 8192)
    assert overflow_numbers("context window exceeded") == (None, None)
    assert parse_sse_data('{"a": 1}') == {"a": 1}
    assert parse_sse_data("[DONE]") == "[DONE]"
    assert "unreadable" in parse_sse_data("{not json")["error"]["message"]


# --- the embedded model -----------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ex() -> AsyncIterator[TextExecutor]:
    # One thread per generation: these tests share a small machine with other suites.
    executor = TextExecutor(Settings(llm_parallel=2, llm_threads=1), env={})
    await executor.start()
    yield executor
    await executor.close()


module_loop = pytest.mark.asyncio(loop_scope="module")


@module_loop
async def test_generates_real_text_with_usage_and_speed(ex: TextExecutor) -> None:
    out = await run(ex, {"prompt": SHORT, "temperature": 0, "max_tokens": 40})
    assert out.error is None and not out.canceled and out.result is not None
    r = out.result
    assert r["model"] == EMBEDDED_MODEL
    assert "quantum" in r["text"].lower()
    assert r["finish_reason"] in ("stop", "length")
    assert r["usage"]["prompt_tokens"] > 5
    assert 5 < r["usage"]["completion_tokens"] <= 40
    assert r["time_to_first_token_ms"] > 0
    assert r["tokens_per_second"] > 0


@module_loop
async def test_temperature_zero_and_seed_give_the_same_text_twice(ex: TextExecutor) -> None:
    data = {"prompt": "Name three fruits.", "temperature": 0, "seed": 42, "max_tokens": 24}
    first, second = await run(ex, data), await run(ex, data)
    assert first.result is not None and second.result is not None
    assert first.result["text"] == second.result["text"] != ""


@module_loop
async def test_tokens_stream_before_completion_and_progress_rises(ex: TextExecutor) -> None:
    ctx = FakeContext()
    out = await run(ex, {"prompt": LONG, "max_tokens": 60, "temperature": 0}, ctx)
    finished = time.monotonic()
    assert out.result is not None
    assert ctx.text == out.result["text"]
    assert all(stream == "text" for _, stream, _ in ctx.outputs)
    assert len(ctx.outputs) >= 30
    # At ~100+ tokens/s the first token arrives well before the last one.
    assert finished - ctx.outputs[0][0] > 0.2
    percents = [p for p, _ in ctx.progress if p is not None]
    assert percents == sorted(percents) and len(set(percents)) >= 3
    assert ctx.progress[-1][0] == 100
    assert any(m and m.endswith("/60 tokens") for _, m in ctx.progress)


@module_loop
async def test_max_tokens_ends_with_length_after_exactly_n_tokens(ex: TextExecutor) -> None:
    ctx = FakeContext()
    out = await run(ex, {"prompt": LONG, "max_tokens": 12}, ctx)
    assert out.result is not None
    assert out.result["finish_reason"] == "length"
    assert out.result["usage"]["completion_tokens"] == 12
    assert len(ctx.outputs) == 12


@module_loop
async def test_stop_sequence_ends_generation_before_it(ex: TextExecutor) -> None:
    data = {"prompt": SHORT, "temperature": 0, "max_tokens": 30}
    full = await run(ex, data)
    assert full.result is not None
    text = full.result["text"]
    word = text.split()[5]  # a word from the middle of the greedy answer
    cut = await run(ex, {**data, "stop": [word]})
    assert cut.result is not None and cut.result["finish_reason"] == "stop"
    assert cut.result["text"].strip() == text[: text.index(word)].strip() != ""
    assert word not in cut.result["text"]


@module_loop
async def test_cancel_mid_generation_returns_quickly_with_partial_text(ex: TextExecutor) -> None:
    ctx = FakeContext()
    task = asyncio.ensure_future(run(ex, {"prompt": LONG, "max_tokens": 2000}, ctx))
    await ctx.wait_for_tokens(5)
    ctx.cancel_requested.set()
    cancelled_at = time.monotonic()
    out = await task
    # The model lets go at its next token: milliseconds, more on busy cores.
    assert time.monotonic() - cancelled_at < 1.0
    assert out.canceled and out.error is None and out.result is not None
    assert out.result["finish_reason"] == "cancelled"
    assert out.result["text"] and out.result["text"] == ctx.text
    assert out.result["usage"]["completion_tokens"] == len(ctx.outputs)
    emitted = len(ctx.outputs)
    await asyncio.sleep(0.1)
    assert len(ctx.outputs) == emitted  # nothing published after the job ended
    # The slot is free again: a new job runs at once.
    after = await run(ex, {"prompt": SHORT, "max_tokens": 5})
    assert after.result is not None and after.result["usage"]["completion_tokens"] == 5


@module_loop
async def test_cancel_before_the_first_token(ex: TextExecutor) -> None:
    ctx = FakeContext()
    ctx.cancel_requested.set()
    started = time.monotonic()
    out = await run(ex, {"prompt": LONG, "max_tokens": 500}, ctx)
    assert time.monotonic() - started < 0.2
    assert out.canceled and out.result is not None and out.result["finish_reason"] == "cancelled"


@module_loop
async def test_timeout_fails_the_job_with_the_partial_text(ex: TextExecutor) -> None:
    ctx = FakeContext(timeout=1.5)
    started = time.monotonic()
    out = await run(ex, {"prompt": LONG, "max_tokens": 2000}, ctx)
    assert time.monotonic() - started < 1.5 + 1.0
    assert not out.canceled
    assert out.error is not None and out.error.type == "timeout"
    assert "1.5 s time limit" in out.error.message
    assert out.result is not None and out.result["text"] == ctx.text != ""
    assert out.result["finish_reason"] == "cancelled"


@module_loop
async def test_two_concurrent_jobs_and_cancelling_one_leaves_the_other_intact(
    ex: TextExecutor,
) -> None:
    steady = {"prompt": SHORT, "temperature": 0, "seed": 1, "max_tokens": 30}
    alone = await run(ex, steady)
    assert alone.result is not None

    ctx_a, ctx_b = FakeContext(), FakeContext()
    job_a = asyncio.ensure_future(run(ex, steady, ctx_a))
    job_b = asyncio.ensure_future(run(ex, {"prompt": LONG, "max_tokens": 2000}, ctx_b))
    await ctx_b.wait_for_tokens(3)
    assert not job_a.done()  # both are generating at once
    ctx_b.cancel_requested.set()
    out_b = await job_b
    out_a = await job_a
    assert out_b.canceled and out_b.result is not None and out_b.result["text"]
    assert out_a.error is None and not out_a.canceled and out_a.result is not None
    assert out_a.result["text"] == alone.result["text"]
    assert out_a.result["usage"] == alone.result["usage"]
    assert ctx_a.text == out_a.result["text"]


@module_loop
async def test_a_prompt_that_cannot_fit_is_refused_at_submit_naming_the_limits(
    ex: TextExecutor,
) -> None:
    with pytest.raises(JobDataError) as info:
        await ex.admit(ex.validate({"prompt": "word " * 3000, "max_tokens": 10}, 30))
    assert info.value.message == (
        "data: the prompt (3031 tokens) plus max_tokens (10) exceeds the context of model "
        f"{EMBEDDED_MODEL!r} (2048 tokens); shorten the prompt or lower max_tokens"
    )
    assert [d["loc"] for d in info.value.details] == [["data", "prompt"], ["data", "max_tokens"]]
    # The prompt alone fits; with max_tokens it would not.
    messages = [{"role": "user", "content": "word " * 1900}]
    with pytest.raises(JobDataError, match=r"the prompt \(1931 tokens\) plus max_tokens \(200\)"):
        await ex.admit(ex.validate({"messages": messages, "max_tokens": 200}, 30))
    await ex.admit(ex.validate({"messages": messages, "max_tokens": 100}, 30))


@module_loop
async def test_a_prompt_beyond_the_context_fails_naming_the_limits(ex: TextExecutor) -> None:
    # A model not loaded at submit (or whose count failed) lets the job find out by running.
    out = await run(ex, {"prompt": "word " * 3000, "max_tokens": 10})
    assert not out.canceled
    assert out.error is not None and out.error.type == "context_length_exceeded"
    assert out.error.message == (
        "the prompt (3031 tokens) plus max_tokens (10) exceeds the context of model "
        f"{EMBEDDED_MODEL!r} (2048 tokens); shorten the prompt or lower max_tokens"
    )
    assert out.result is not None and out.result["text"] == ""
    assert out.result["finish_reason"] == "error"
    assert out.result["usage"] == {"prompt_tokens": 3031, "completion_tokens": 0}


async def test_after_start_a_job_never_stalls_the_event_loop() -> None:
    """Loading the model holds the GIL; start() does it, so serving never freezes."""
    executor = TextExecutor(Settings(llm_parallel=1, llm_threads=1), env={})
    try:
        await executor.start()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        out = await run(executor, {"prompt": SHORT, "max_tokens": 32})
        done.set()
        await tick
        assert out.result is not None and out.result["usage"]["completion_tokens"] > 0
        assert max(gaps) < 0.25, f"event loop stalled {max(gaps):.3f} s during a job"
    finally:
        await executor.close()


async def test_a_job_abandoned_while_the_model_loads_does_not_spoil_the_load() -> None:
    # Without start(), the first job loads the model. If it is abandoned mid-load (its task
    # cancelled, as the engine does at its own deadline), the next job still gets the model.
    executor = TextExecutor(Settings(llm_parallel=1, llm_threads=1), env={})
    try:
        abandoned = asyncio.ensure_future(run(executor, {"prompt": SHORT, "max_tokens": 8}))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        out = await run(executor, {"prompt": SHORT, "max_tokens": 8})
        assert out.result is not None and out.result["usage"]["completion_tokens"] == 8
    finally:
        await executor.close()


# --- an OpenAI-compatible server ---------------------------------------------------------------


def openai_executor(tmp_path: Path, server: OpenAIServer, key: str | None) -> TextExecutor:
    models = server.catalog(tmp_path / "models.json")
    env = {"LOCAL_LLAMA_KEY": key} if key is not None else {}
    return TextExecutor(Settings(models_file=str(models)), env=env)


async def test_openai_compatible_server_from_the_catalog_file(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    executor = openai_executor(tmp_path, openai_server, openai_server.key)
    try:
        ctx = FakeContext()
        out = await run(executor, {"model": "local-llama", "prompt": LONG, "max_tokens": 15}, ctx)
        assert out.error is None and out.result is not None
        assert out.result["model"] == "local-llama"
        assert out.result["finish_reason"] == "length"
        assert out.result["usage"]["completion_tokens"] == 15
        assert out.result["usage"]["prompt_tokens"] > 5
        assert out.result["text"] == ctx.text != ""
    finally:
        await executor.close()


async def test_deepseek_route_streams_from_the_configured_base_url(
    openai_server: OpenAIServer,
) -> None:
    env = {"DEEPSEEK_API_KEY": openai_server.key, "DEEPSEEK_BASE_URL": f"{openai_server.url}/v1"}
    executor = TextExecutor(Settings(), env=env)
    try:
        ctx = FakeContext()
        task = asyncio.ensure_future(
            run(executor, {"model": "deepseek-v3", "prompt": LONG, "max_tokens": 2000}, ctx)
        )
        await ctx.wait_for_tokens(5)
        ctx.cancel_requested.set()
        cancelled_at = time.monotonic()
        out = await task
        assert time.monotonic() - cancelled_at < 0.2
        assert out.canceled and out.result is not None and out.result["text"] == ctx.text
    finally:
        await executor.close()


async def test_a_wrong_api_key_is_upstream_auth(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    executor = openai_executor(tmp_path, openai_server, "wrong-key")
    try:
        out = await run(executor, {"model": "local-llama", "prompt": "hi", "max_tokens": 5})
        assert out.error is not None and out.error.type == "upstream_auth"
        assert "401" in out.error.message and "Invalid API Key" in out.error.message
    finally:
        await executor.close()


async def test_a_prompt_beyond_the_upstream_context_is_context_length_exceeded(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    executor = openai_executor(tmp_path, openai_server, openai_server.key)
    try:
        data = {"model": "local-llama", "prompt": "word " * 3000, "max_tokens": 5}
        out = await run(executor, data)
        assert out.error is not None and out.error.type == "context_length_exceeded"
        assert out.error.message.startswith(
            "the prompt (3031 tokens) plus max_tokens (5) exceeds the context of model "
            "'local-llama' (2048 tokens); shorten the prompt or lower max_tokens ("
        )
        assert "answered 400" in out.error.message and "context size" in out.error.message
        assert out.result is not None and out.result["finish_reason"] == "error"
        assert out.result["usage"]["prompt_tokens"] == 3031
    finally:
        await executor.close()


async def test_an_unreachable_server_is_retried_then_upstream_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = OpenAIServer(f"http://127.0.0.1:{port}", "k")
    executor = openai_executor(tmp_path, server, "k")
    try:
        started = time.monotonic()
        out = await run(executor, {"model": "local-llama", "prompt": "hi", "max_tokens": 5})
        elapsed = time.monotonic() - started
        assert out.error is not None and out.error.type == "upstream_error"
        assert "cannot reach" in out.error.message
        assert f"after {MAX_ATTEMPTS} attempts" in out.error.message
        # Backoff with full jitter: under 0.5 + 1 + 2 seconds in all between the attempts.
        assert elapsed < 3.5 + 5
    finally:
        await executor.close()


# --- upstream failures: a real loopback HTTP server in the role of a remote API ----------------


class FakeUpstream:
    """A tiny OpenAI-compatible HTTP server on 127.0.0.1 standing in for a remote API that
    cannot run here. What it does depends on the prompt's first word:

    ``auth`` 401; ``rate`` 429 with ``Retry-After: 0.4``; ``ratelong`` 429 with
    ``Retry-After: 120``; ``down`` 503; ``flaky`` 503 twice, then a stream; ``hang`` reads the
    request and never answers; ``context`` 400 with DeepSeek's context-length message; ``bad``
    400 with another message; ``slow`` streams a token every 50 ms for 10 s; anything else
    streams "Hello from upstream" with usage. Each request is recorded with its arrival time.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[float, str, str | None]] = []
        self.disconnected = threading.Event()
        self.closing = threading.Event()
        self._counts: dict[str, int] = {}
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = str(body["messages"][-1]["content"])
                upstream.requests.append(
                    (time.monotonic(), prompt, self.headers.get("Authorization"))
                )
                word = prompt.split()[0] if prompt.split() else ""
                upstream._counts[prompt] = upstream._counts.get(prompt, 0) + 1
                upstream.answer(self, word, upstream._counts[prompt])

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def times(self, prompt: str) -> list[float]:
        return [t for t, p, _ in self.requests if p == prompt]

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def _json(h: http.server.BaseHTTPRequestHandler, status: int, doc: Any, **hdrs: str) -> None:
        raw = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        for k, v in hdrs.items():
            h.send_header(k.replace("_", "-"), v)
        h.end_headers()
        h.wfile.write(raw)

    def _stream(
        self, h: http.server.BaseHTTPRequestHandler, pieces: list[str], pause: float
    ) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        try:
            for piece in pieces:
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                h.wfile.flush()
                if pause and self.closing.wait(pause):
                    return
            end = {
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces)},
            }
            h.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            h.wfile.flush()
        except OSError:  # the client closed the connection
            self.disconnected.set()

    @staticmethod
    def _multiline(h: http.server.BaseHTTPRequestHandler) -> None:
        """Each event's JSON split over several ``data:`` lines, as SSE allows, with a comment
        and CRLF line ends."""
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        h.wfile.write(
            b": keep-alive\r\n\r\n"
            b'data: {"choices": [{"index": 0,\r\ndata:  "delta": {"content": "multi"}}]}\r\n\r\n'
            b'data: {"choices": [{"index": 0, "delta":\ndata: {"content": " line"},\n'
            b'data: "finish_reason": "stop"}],\ndata: "usage": {"prompt_tokens": 5,\n'
            b'data: "completion_tokens": 2}}\n\n'
            b"data: [DONE]\n\n"
        )
        h.wfile.flush()

    def answer(self, h: http.server.BaseHTTPRequestHandler, word: str, count: int) -> None:
        def err(msg: str, kind: str) -> dict[str, Any]:
            return {"error": {"message": msg, "type": kind}}

        if word == "auth":
            self._json(h, 401, err("Authentication Fails, Your api key is invalid", "auth"))
        elif word == "rate":
            self._json(h, 429, err("Rate limit reached", "rate_limit"), Retry_After="0.4")
        elif word == "ratelong":
            self._json(h, 429, err("Quota exceeded", "rate_limit"), Retry_After="120")
        elif word == "down" or (word == "flaky" and count <= 2):
            self._json(h, 503, err("Service Unavailable", "server_error"))
        elif word == "hang":
            self.closing.wait(30)
        elif word == "context":
            msg = (
                "This model's maximum context length is 65536 tokens. However, you requested "
                "70000 tokens (69000 in the messages, 1000 in the completion)."
            )
            self._json(h, 400, err(msg, "invalid_request_error"))
        elif word == "bad":
            self._json(h, 400, err("Unknown parameter: frobnicate", "invalid_request_error"))
        elif word == "slow":
            self._stream(h, [f" t{i}" for i in range(200)], 0.05)
        elif word == "multiline":
            self._multiline(h)
        else:
            self._stream(h, ["Hello", " from", " upstream"], 0.0)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest_asyncio.fixture
async def remote(tmp_path: Path, upstream: FakeUpstream) -> AsyncIterator[TextExecutor]:
    """An executor whose ``remote`` model is the fake upstream, with a 1 s silence limit."""
    models = tmp_path / "models.json"
    entry = {
        "name": "remote",
        "backend": "openai",
        "base_url": upstream.url,
        "model": "remote-1",
        "api_key_env": "REMOTE_KEY",
        "timeout": 1,
    }
    models.write_text(json.dumps({"models": [entry]}), encoding="utf-8")
    executor = TextExecutor(Settings(models_file=str(models)), env={"REMOTE_KEY": "sk-remote"})
    yield executor
    await executor.close()


async def run_remote(
    ex: TextExecutor, prompt: str, timeout: float = 20.0, ctx: FakeContext | None = None
) -> Outcome:
    ctx = ctx or FakeContext(timeout=timeout)
    return await ex.execute(ex.validate({"model": "remote", "prompt": prompt}, 30), ctx)


def test_http_failures_are_classified() -> None:
    kinds = {
        status: http_error(status, "nope", "http://u").error_type
        for status in (400, 401, 403, 404, 408, 429, 500, 502, 503)
    }
    assert kinds == {
        400: "model_error",
        401: "upstream_auth",
        403: "upstream_auth",
        404: "model_error",
        408: "upstream_timeout",
        429: "upstream_rate_limited",
        500: "upstream_error",
        502: "upstream_error",
        503: "upstream_error",
    }
    assert http_error(400, "maximum context length is 8k", "u").error_type == (
        "context_length_exceeded"
    )
    assert [s for s in kinds if http_error(s, "x", "u").retryable] == [408, 429, 500, 502, 503]


def test_retry_policy_backs_off_honours_retry_after_and_stays_within_the_time_left() -> None:
    transient = BackendError("503", "upstream_error", retryable=True)
    # The SDK's policy: capped exponential backoff with full jitter.
    assert retry_delay(transient, 0, jitter=0.5, time_left=None) == 0.25
    assert retry_delay(transient, 2, jitter=0.999, time_left=None) == pytest.approx(2.0, 0.01)
    assert retry_delay(transient, MAX_ATTEMPTS - 1, jitter=0.5, time_left=None) is None
    assert retry_delay(transient, 2, jitter=0.99, time_left=1.0) is None  # 1.98 s > 1 s left
    limited = BackendError("429", "upstream_rate_limited", retryable=True, retry_after=3.0)
    assert retry_delay(limited, 0, jitter=0.0, time_left=10.0) == 3.0
    assert retry_delay(limited, 0, jitter=0.0, time_left=2.0) is None
    too_long = BackendError("429", "upstream_rate_limited", retryable=True, retry_after=600.0)
    assert retry_delay(too_long, 0, jitter=0.0, time_left=None) is None
    assert retry_delay(BackendError("401", "upstream_auth"), 0, jitter=0.0, time_left=9) is None


async def test_remote_stream_events_split_over_several_data_lines_are_read_whole(
    remote: TextExecutor,
) -> None:
    ctx = FakeContext()
    out = await run_remote(remote, "multiline please", ctx=ctx)
    assert out.error is None and out.result is not None
    assert out.result["text"] == ctx.text == "multi line"
    assert out.result["usage"] == {"prompt_tokens": 5, "completion_tokens": 2}
    assert out.result["finish_reason"] == "stop"


async def test_remote_happy_path_streams_with_the_api_key(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    ctx = FakeContext()
    out = await run_remote(remote, "say hello", ctx=ctx)
    assert out.error is None and out.result is not None
    assert out.result["text"] == ctx.text == "Hello from upstream"
    assert out.result["usage"] == {"prompt_tokens": 7, "completion_tokens": 3}
    assert upstream.requests[0][2] == "Bearer sk-remote"


async def test_upstream_401_fails_at_once_as_upstream_auth(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    out = await run_remote(remote, "auth please")
    assert out.error is not None and out.error.type == "upstream_auth"
    assert "401" in out.error.message and "api key is invalid" in out.error.message
    assert len(upstream.times("auth please")) == 1  # a refused key is not retried


async def test_upstream_429_is_retried_after_retry_after_then_upstream_rate_limited(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    out = await run_remote(remote, "rate me")
    assert out.error is not None and out.error.type == "upstream_rate_limited"
    assert "429" in out.error.message and f"after {MAX_ATTEMPTS} attempts" in out.error.message
    times = upstream.times("rate me")
    assert len(times) == MAX_ATTEMPTS
    assert all(b - a >= 0.4 for a, b in itertools.pairwise(times))  # Retry-After: 0.4


async def test_a_retry_after_beyond_the_jobs_time_fails_at_once(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    started = time.monotonic()
    out = await run_remote(remote, "ratelong x", timeout=20)
    assert time.monotonic() - started < 1
    assert out.error is not None and out.error.type == "upstream_rate_limited"
    assert len(upstream.times("ratelong x")) == 1


async def test_upstream_5xx_is_retried_then_upstream_error(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    out = await run_remote(remote, "down again")
    assert out.error is not None and out.error.type == "upstream_error"
    assert "503" in out.error.message
    times = upstream.times("down again")
    assert len(times) == MAX_ATTEMPTS
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Capped exponential backoff with full jitter: each wait is under base * 2**n (0.5 s base),
    # plus the time a request takes on a busy machine.
    for n, gap in enumerate(gaps):
        assert gap < 0.5 * 2**n + 0.5, gaps


async def test_a_transient_5xx_is_retried_and_the_job_completes(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    out = await run_remote(remote, "flaky hello")
    assert out.error is None and out.result is not None
    assert out.result["text"] == "Hello from upstream"
    assert len(upstream.times("flaky hello")) == 3


async def test_a_silent_upstream_is_retried_then_upstream_timeout(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    out = await run_remote(remote, "hang on", timeout=20)
    assert out.error is not None and out.error.type == "upstream_timeout"
    assert "did not answer in time" in out.error.message
    assert len(upstream.times("hang on")) == MAX_ATTEMPTS  # 1 s silence limit, 4 attempts


async def test_a_silent_upstream_near_the_jobs_limit_is_upstream_timeout_not_timeout(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    # deepseek-v3 keeps its long default silence limit: the job's own time bounds it.
    env = {"DEEPSEEK_API_KEY": "k", "DEEPSEEK_BASE_URL": upstream.url}
    executor = TextExecutor(Settings(), env=env)
    try:
        started = time.monotonic()
        ctx = FakeContext(timeout=2.0)
        data = executor.validate({"model": "deepseek-v3", "prompt": "hang tight"}, 30)
        out = await executor.execute(data, ctx)
        assert 1.5 <= time.monotonic() - started < 2.0
        assert out.error is not None and out.error.type == "upstream_timeout"
    finally:
        await executor.close()


async def test_upstream_context_overflow_and_other_refusals(remote: TextExecutor) -> None:
    out = await run_remote(remote, "context overflow")
    assert out.error is not None and out.error.type == "context_length_exceeded"
    assert out.error.message.startswith(
        "the prompt (69000 tokens) plus max_tokens (256) exceeds the context of model 'remote' "
        "(65536 tokens); shorten the prompt or lower max_tokens ("
    )
    assert "answered 400" in out.error.message and "maximum context length" in out.error.message
    assert out.result is not None and out.result["finish_reason"] == "error"
    assert out.result["usage"] == {"prompt_tokens": 69000, "completion_tokens": 0}
    out = await run_remote(remote, "bad request")
    assert out.error is not None and out.error.type == "model_error"
    assert "Unknown parameter" in out.error.message


async def test_cancel_during_backoff_ends_the_job_promptly(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    ctx = FakeContext()
    task = asyncio.ensure_future(run_remote(remote, "down below", ctx=ctx))
    while not upstream.times("down below"):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    ctx.cancel_requested.set()
    cancelled_at = time.monotonic()
    out = await task
    assert time.monotonic() - cancelled_at < 0.2
    assert out.canceled and out.result is not None and out.result["text"] == ""
    await asyncio.sleep(1.0)
    # No retry after the cancel (the full-jitter backoff may retry once before it lands).
    times = upstream.times("down below")
    assert times and all(t <= cancelled_at for t in times), (times, cancelled_at)


async def test_cancel_mid_stream_closes_the_upstream_request(
    remote: TextExecutor, upstream: FakeUpstream
) -> None:
    ctx = FakeContext()
    task = asyncio.ensure_future(run_remote(remote, "slow story", ctx=ctx))
    await ctx.wait_for_tokens(3)
    ctx.cancel_requested.set()
    out = await task
    assert out.canceled and out.result is not None and out.result["text"] == ctx.text != ""
    # The upstream notices the closed connection at its next write (every 50 ms).
    assert await asyncio.to_thread(upstream.disconnected.wait, 2.0)
