"""text_generation end to end: the real ``deepexec serve``, the SDK and the CLI, the embedded
model, and a loopback HTTP server standing in for DeepSeek's API (which cannot run here).

``fresh`` is a server started with no configuration at all. ``remote`` is started with
``DEEPSEEK_API_KEY`` and ``DEEPSEEK_BASE_URL`` pointing at ``FakeUpstream`` and two text
runner slots.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from deepexec_sdk import (
    DeepExecClient,
    JobStatus,
    MCPJobEvent,
    MCPJobStatusResponse,
    MCPValidationError,
)
from tests.serverproc import DEEPEXEC, ServerProcess
from tests.test_text_executor import FakeUpstream

pytestmark = [pytest.mark.timeout(120)]

EMBEDDED = "smollm2-135m-instruct"
LONG = "Write a very long story about a dragon who learns to bake bread."


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("fresh")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def remote(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[ServerProcess]:
    env = {"DEEPSEEK_API_KEY": "sk-test-upstream", "DEEPSEEK_BASE_URL": upstream.url}
    srv = ServerProcess(
        tmp_path_factory.mktemp("remote"), "--concurrency", "text_generation=2", env=env
    ).start()
    yield srv
    srv.stop()


def connect(srv: ServerProcess) -> DeepExecClient:
    return DeepExecClient(base_url=srv.base_url, api_key=srv.api_key)


def wait_until(what: str, check: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {limit} s"
        time.sleep(0.02)


def running_with_tokens(client: DeepExecClient, job_id: str) -> bool:
    status = client.get_mcp_job_status(job_id)
    assert not status.is_terminal, status
    return status.status == JobStatus.RUNNING and (status.progress or 0) > 0


# --- a fresh server, no configuration ---------------------------------------------------------


def test_a_fresh_server_generates_real_text(fresh: ServerProcess) -> None:
    with connect(fresh) as client:
        status = client.generate_text_and_wait(
            "Explain quantum computing in one sentence.", max_tokens=40, max_wait_time=60
        )
    assert status.status == JobStatus.COMPLETED, status.error
    assert status.result is not None
    assert status.result["model"] == EMBEDDED
    assert "quantum" in status.result["text"].lower()
    assert status.result["usage"]["completion_tokens"] > 5
    assert status.progress == 100


def test_temperature_zero_and_a_seed_give_the_same_text_twice(fresh: ServerProcess) -> None:
    with connect(fresh) as client:
        texts = [
            client.generate_text_and_wait(
                "Name three fruits.", max_tokens=24, temperature=0, seed=42, max_wait_time=60
            ).result
            for _ in range(2)
        ]
    assert texts[0] is not None and texts[1] is not None
    assert texts[0]["text"] == texts[1]["text"] != ""


def test_progress_rises_and_tokens_stream_before_the_job_ends(fresh: ServerProcess) -> None:
    with connect(fresh) as client:
        job = client.submit_mcp_job(
            "long story", "text_generation", {"prompt": LONG, "max_tokens": 200, "temperature": 0}
        )
        events: list[tuple[float, MCPJobEvent]] = [
            (time.monotonic(), e) for e in client.stream_mcp_job_events(job.job_id)
        ]
    final = events[-1][1]
    assert final.type == "status" and final.job is not None
    assert final.job.status == JobStatus.COMPLETED and final.job.result is not None
    outputs = [(t, e) for t, e in events if e.type == "output"]
    assert len(outputs) >= 20 and all(e.stream == "text" for _, e in outputs)
    # The tokens arrived over the generation, not in one burst at the end.
    assert events[-1][0] - outputs[0][0] > 0.2
    streamed = "".join(e.text or "" for _, e in outputs)
    assert final.job.result["text"].endswith(streamed)  # the stream may start a bit late
    percents = [e.progress for _, e in events if e.type == "progress" and e.progress is not None]
    assert percents == sorted(percents) and len(set(percents)) >= 3


def test_deepseek_without_a_key_is_refused_naming_the_variable(fresh: ServerProcess) -> None:
    with connect(fresh) as client, pytest.raises(MCPValidationError) as info:
        client.generate_text_and_wait("hi", model="deepseek-v3")
    assert info.value.status_code == 422
    assert info.value.error_type == "model_unavailable"
    assert "DEEPSEEK_API_KEY" in info.value.message


def test_an_unknown_model_is_refused_with_the_available_list(fresh: ServerProcess) -> None:
    with connect(fresh) as client, pytest.raises(MCPValidationError) as info:
        client.generate_text_and_wait("hi", model="gpt-17")
    assert info.value.error_type == "model_unavailable"
    assert f"unknown model 'gpt-17'; available models: {EMBEDDED}" in info.value.message


def test_cancel_of_a_running_text_job_keeps_the_partial_text(fresh: ServerProcess) -> None:
    with connect(fresh) as client:
        job = client.submit_mcp_job(
            "to cancel", "text_generation", {"prompt": LONG, "max_tokens": 2000}
        )
        wait_until("generating", lambda: running_with_tokens(client, job.job_id))
        client.cancel_mcp_job(job.job_id, reason="enough")
        status = client.wait_for_mcp_job_completion(job.job_id, max_wait_time=30)
    assert status.status == JobStatus.CANCELED
    assert status.result is not None and status.result["text"]
    assert status.result["finish_reason"] == "cancelled"
    assert 0 < status.result["usage"]["completion_tokens"] < 2000


#: About 1,900 tokens once in the chat template (with ``max_tokens`` 64: within the 2,048 context).
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 187


def test_cancelled_long_prompts_do_not_delay_another_tenants_job(tmp_path: Path) -> None:
    """Cancelled jobs stop llama.cpp's reading of their prompts, and hold their runner slot
    until it has stopped, so a short job of another tenant is neither queued behind them in
    the engine nor in llama.cpp."""
    srv = ServerProcess(tmp_path).start()  # its own server: a failure leaves busy llama.cpp
    try:
        other_key = srv.new_tenant_key("patient")
        with connect(srv) as client:
            warm = client.generate_text_and_wait("Say hi.", max_tokens=4, max_wait_time=60)
            assert warm.status == JobStatus.COMPLETED, warm.error
            doomed = [
                client.submit_mcp_job(
                    f"long {i}",
                    "text_generation",
                    {"prompt": f"Job {i}. {LONG_PROMPT}", "max_tokens": 64},
                ).job_id
                for i in range(20)
            ]
            for job_id in doomed:
                client.cancel_mcp_job(job_id)
            # A running job ends once llama.cpp has dropped its prompt (one batch later).
            ends = [client.wait_for_mcp_job_completion(j, max_wait_time=10) for j in doomed]
            cancelled_at = datetime.now(UTC)
        assert all(s.status == JobStatus.CANCELED for s in ends), [s.status for s in ends]
        with DeepExecClient(base_url=srv.base_url, api_key=other_key) as other:
            job = other.submit_mcp_job(
                "short", "text_generation", {"prompt": "Say hi.", "max_tokens": 4}
            )
            status = other.wait_for_mcp_job_completion(job.job_id, max_wait_time=30)
        assert status.status == JobStatus.COMPLETED, status.error
        assert status.started_at is not None and status.finished_at is not None
        assert (status.started_at - cancelled_at).total_seconds() < 1.0
        # Behind the cancelled prompts it took 20 s on idle cores (over 30 s on busy ones);
        # the bound leaves room for a machine busy enough to slow the job alone.
        assert warm.started_at is not None and warm.finished_at is not None
        alone = (warm.finished_at - warm.started_at).total_seconds()
        assert (status.finished_at - cancelled_at).total_seconds() < 2 * alone + 8.0
    finally:
        srv.stop()


def test_a_prompt_too_long_for_the_context_is_a_422_naming_the_limits(
    fresh: ServerProcess,
) -> None:
    with connect(fresh) as client, pytest.raises(MCPValidationError) as info:
        client.submit_mcp_job("too long", "text_generation", {"prompt": "word " * 3000})
    assert info.value.status_code == 422 and info.value.error_type == "invalid_job_data"
    assert info.value.message == (
        "data: the prompt (3031 tokens) plus max_tokens (256) exceeds the context of model "
        f"'{EMBEDDED}' (2048 tokens); shorten the prompt or lower max_tokens"
    )


def test_list_models_and_languages(fresh: ServerProcess) -> None:
    with connect(fresh) as client:
        models = client.list_models()
        languages = client.list_languages()
    assert models.default_model == EMBEDDED
    by_name = {m.name: m for m in models.models}
    assert by_name[EMBEDDED].available and by_name[EMBEDDED].default
    assert by_name[EMBEDDED].aliases == ["smollm2"]
    v3 = by_name["deepseek-v3"]
    assert not v3.available and v3.missing == ["DEEPSEEK_API_KEY"]
    assert v3.hint == "model 'deepseek-v3' needs DEEPSEEK_API_KEY to be set on the server"
    names = [lang.name for lang in languages.languages]
    assert "python" in names
    assert all(lang.version for lang in languages.languages)


def test_models_and_languages_need_an_api_key(fresh: ServerProcess) -> None:
    for path in ("/v1/models", "/v1/languages"):
        answer = httpx.get(fresh.base_url + path, timeout=10)
        assert answer.status_code == 401, path


def test_cli_models_lists_the_embedded_model_as_available(fresh: ServerProcess) -> None:
    out = fresh.cli("models").stdout.splitlines()
    assert out[0].split() == ["MODEL", "AVAILABLE", "BACKEND", "ALIASES", "TO", "USE", "IT"]
    row = next(line for line in out if line.startswith(EMBEDDED))
    assert row.split()[:4] == [EMBEDDED, "(default)", "yes", "embedded"]
    v3 = next(line for line in out if line.startswith("deepseek-v3 "))
    assert v3.split()[1] == "no" and "DEEPSEEK_API_KEY to be set" in v3
    langs = fresh.cli("languages").stdout.splitlines()
    assert langs[0].split() == ["LANGUAGE", "VERSION", "PATH"]
    assert any(line.split()[0] == "python" for line in langs[1:])


def test_cli_submit_follow_prints_tokens_live(fresh: ServerProcess) -> None:
    proc = subprocess.Popen(
        [DEEPEXEC, "submit", "--prompt", LONG, "--max-tokens", "300", "--follow"],
        env=fresh.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = os.read(proc.stdout.fileno(), 4096)
        assert first and proc.poll() is None  # text printed while the job still runs
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    printed = (first + rest).decode()
    match = re.search(rb"(job_[0-9a-f]+) COMPLETED", err)
    assert match, err
    with connect(fresh) as client:
        status = client.get_mcp_job_status(match.group(1).decode())
    assert status.result is not None and status.result["text"].endswith(printed)
    assert len(printed) > 20


# --- a server whose DeepSeek models point at a loopback upstream ------------------------------


def test_remote_models_are_listed_as_available(remote: ServerProcess) -> None:
    with connect(remote) as client:
        by_name = {m.name: m for m in client.list_models().models}
    assert by_name["deepseek-v3"].available and by_name["deepseek-r1"].available
    out = remote.cli("models").stdout
    assert re.search(r"^deepseek-v3\s+yes\s+openai", out, re.M), out


def test_upstream_failures_end_jobs_failed_with_distinct_error_types(
    remote: ServerProcess, upstream: FakeUpstream
) -> None:
    expected = {
        "hello there": None,
        "flaky but fine": None,
        "auth nope": "upstream_auth",
        "rate limited": "upstream_rate_limited",
        "down hard": "upstream_error",
        "hang forever": "upstream_timeout",
        "context too long": "context_length_exceeded",
        "bad parameter": "model_error",
    }
    with connect(remote) as client:
        jobs = {
            prompt: client.submit_mcp_job(
                prompt,
                "text_generation",
                {"prompt": prompt, "model": "deepseek-v3"},
                timeout=4 if prompt.startswith("hang") else 30,
            ).job_id
            for prompt in expected
        }
        done: dict[str, MCPJobStatusResponse] = {
            prompt: client.wait_for_mcp_job_completion(job_id, max_wait_time=60)
            for prompt, job_id in jobs.items()
        }
    for prompt, error_type in expected.items():
        status = done[prompt]
        if error_type is None:
            assert status.status == JobStatus.COMPLETED, (prompt, status.error)
            assert status.result is not None and status.result["text"] == "Hello from upstream"
            assert status.result["model"] == "deepseek-v3"
        else:
            assert status.status == JobStatus.FAILED, (prompt, status)
            assert status.error is not None and status.error.type == error_type, (prompt, status)
            assert status.result is not None and status.result["finish_reason"] == "error"
    overflow = done["context too long"]
    assert overflow.result is not None and overflow.result["usage"]["prompt_tokens"] == 69000
    assert overflow.error is not None and overflow.error.message.startswith(
        "the prompt (69000 tokens) plus max_tokens (256) exceeds the context of model "
        "'deepseek-v3' (65536 tokens)"
    )
    # Transient failures were retried, the others were not.
    assert len(upstream.times("flaky but fine")) == 3
    assert len(upstream.times("rate limited")) == 4
    assert len(upstream.times("down hard")) == 4
    assert len(upstream.times("auth nope")) == 1
    assert len(upstream.times("context too long")) == 1
    assert {auth for _, _, auth in upstream.requests} == {"Bearer sk-test-upstream"}


def test_two_concurrent_jobs_and_a_cancel_of_one_leaves_the_other_intact(
    remote: ServerProcess,
) -> None:
    steady = {"prompt": LONG, "max_tokens": 80, "temperature": 0, "seed": 3}
    with connect(remote) as client:
        alone = client.wait_for_mcp_job_completion(
            client.submit_mcp_job("alone", "text_generation", steady).job_id, max_wait_time=60
        )
        assert alone.status == JobStatus.COMPLETED and alone.result is not None
        doomed = client.submit_mcp_job(
            "doomed", "text_generation", {"prompt": LONG, "max_tokens": 2000}
        ).job_id
        wait_until("generating", lambda: running_with_tokens(client, doomed))
        kept = client.submit_mcp_job("kept", "text_generation", steady).job_id
        wait_until("both generating", lambda: running_with_tokens(client, kept))
        assert client.get_mcp_job_status(doomed).status == JobStatus.RUNNING
        client.cancel_mcp_job(doomed)
        doomed_end = client.wait_for_mcp_job_completion(doomed, max_wait_time=30)
        kept_end = client.wait_for_mcp_job_completion(kept, max_wait_time=60)
    assert doomed_end.status == JobStatus.CANCELED
    assert doomed_end.result is not None and doomed_end.result["text"]
    assert kept_end.status == JobStatus.COMPLETED and kept_end.result is not None
    assert kept_end.result["text"] == alone.result["text"]
    assert kept_end.result["usage"] == alone.result["usage"]
