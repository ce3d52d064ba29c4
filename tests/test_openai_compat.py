"""The OpenAI-compatible API (``/openai/v1``), driven by the official ``openai`` client,
unmodified, against the real server and its embedded model: models, chat and legacy
completions, streamed and not, errors as the client's own exception classes, and a client
that goes away cancelling its job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.llama_server import OpenAIServer
from tests.serverproc import ServerProcess

MODEL = "smollm2-135m-instruct"


@pytest.fixture
def oai(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{server.base_url}/openai/v1", api_key=server.api_key, max_retries=0
    ) as client:
        yield client


def job(server: ServerProcess, job_id: str) -> dict[str, object]:
    res = httpx.get(
        f"{server.base_url}/v1/jobs/{job_id}",
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=10,
    )
    res.raise_for_status()
    body: dict[str, object] = res.json()
    return body


def test_models_are_the_servers_usable_models(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert MODEL in ids
    assert oai.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


def test_chat_completion_is_a_job_with_usage(oai: openai.OpenAI, server: ServerProcess) -> None:
    done = oai.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Answer in one word."},
            {"role": "user", "content": "What colour is the sky?"},
        ],
        max_tokens=8,
        temperature=0,
        seed=3,
        user="ignored-field",
    )
    choice = done.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert done.usage is not None
    assert 0 < done.usage.completion_tokens <= 8
    assert done.usage.prompt_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert done.model == MODEL
    behind = job(server, done.id.removeprefix("chatcmpl-"))
    assert behind["status"] == "COMPLETED" and behind["tags"] == ["openai"]
    assert behind["result"]["text"] == choice.message.content  # type: ignore[index]


def test_streamed_chat_sends_every_token_then_the_usage(
    oai: openai.OpenAI, server: ServerProcess
) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three fruits."}],
        max_tokens=24,
        temperature=0,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert 0 < usage.completion_tokens <= 24
    behind = job(server, chunks[0].id.removeprefix("chatcmpl-"))
    assert behind["status"] == "COMPLETED"
    assert text == behind["result"]["text"]  # type: ignore[index]


def test_legacy_completion_streamed_and_not(oai: openai.OpenAI) -> None:
    done = oai.completions.create(model=MODEL, prompt="One, two,", max_tokens=6, temperature=0)
    assert done.object == "text_completion"
    assert isinstance(done.choices[0].text, str) and done.choices[0].text
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 6
    pieces = list(
        oai.completions.create(
            model=MODEL, prompt="One, two,", max_tokens=6, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in pieces) == done.choices[0].text


def test_errors_are_the_clients_own_exceptions(server: ServerProcess, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-9" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model=MODEL, messages=[])
    assert bad.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]
        )
    with (
        openai.OpenAI(
            base_url=f"{server.base_url}/openai/v1", api_key="wrong", max_retries=0
        ) as stranger,
        pytest.raises(openai.AuthenticationError),
    ):
        stranger.models.list()


def test_a_tenants_quota_is_the_clients_rate_limit_error(server: ServerProcess) -> None:
    """Past its submit_rate quota a tenant's request is a 429 that the client raises as
    RateLimitError, with the retry-after the server asks for."""
    server.cli("tenants", "set", "openai-limited", "--submit-rate", "1/min")
    key = server.new_tenant_key("openai-limited")
    with openai.OpenAI(
        base_url=f"{server.base_url}/openai/v1", api_key=key, max_retries=0
    ) as client:
        hi = [{"role": "user", "content": "hi"}]
        first = client.chat.completions.create(model=MODEL, messages=hi, max_tokens=2)
        assert first.choices[0].finish_reason in ("length", "stop")
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model=MODEL, messages=hi, max_tokens=2)
    assert "submit_rate" in limited.value.message
    assert limited.value.code == "quota_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_a_client_that_closes_the_stream_cancels_its_job(
    oai: openai.OpenAI, server: ServerProcess
) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 1000, separated by commas."}],
        max_tokens=2000,
        temperature=0,
        stream=True,
    )
    first = [next(stream) for _ in range(3)]
    job_id = first[0].id.removeprefix("chatcmpl-")
    assert job(server, job_id)["status"] == "RUNNING"
    stream.close()
    deadline = time.monotonic() + 15
    while job(server, job_id)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job(server, job_id)["status"] == "CANCELED"


def test_the_same_through_an_openai_compatible_upstream_in_the_catalog(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    """A catalog model whose backend is llama.cpp's own OpenAI-compatible HTTP server: the
    official client, through DeepExec's queue, gets its answers as from the embedded one."""
    srv = ServerProcess(
        tmp_path / "home",
        env={
            "DEEPEXEC_MODELS_FILE": str(openai_server.catalog(tmp_path / "models.json")),
            "LOCAL_LLAMA_KEY": openai_server.key,
        },
    )
    srv.start()
    try:
        with openai.OpenAI(
            base_url=f"{srv.base_url}/openai/v1", api_key=srv.api_key, max_retries=0
        ) as client:
            assert "local-llama" in [m.id for m in client.models.list()]
            hi = [{"role": "user", "content": "Count: one, two,"}]
            done = client.chat.completions.create(model="local-llama", messages=hi, max_tokens=8)
            assert done.model == "local-llama" and done.choices[0].message.content
            assert done.usage is not None and done.usage.completion_tokens == 8
            chunks = list(
                client.chat.completions.create(
                    model="local-llama",
                    messages=hi,
                    max_tokens=8,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
            legacy = client.completions.create(model="local-llama", prompt="1, 2, 3,", max_tokens=4)
            assert legacy.choices[0].text and legacy.usage is not None
    finally:
        srv.stop()
