"""The public surface: both clients offer the same methods with the same signatures, the
package exports what the reference names, and importing it loads nothing of the server."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import deepexec_sdk
from deepexec_sdk import DeepExecAsyncClient, DeepExecClient

#: The async client closes with ``aclose()`` (httpx's convention) and also offers ``close()``
#: as a coroutine, so code ported from the sync client keeps working.
ASYNC_ONLY = {"aclose"}

REFERENCE_METHODS = {
    "submit_mcp_job",
    "get_mcp_job_status",
    "cancel_mcp_job",
    "wait_for_mcp_job_completion",
    "list_mcp_jobs",
    "stream_mcp_job_events",
    "execute_code_and_wait",
    "generate_text_and_wait",
    "close",
}

#: Batches: many jobs submitted in one request, waited on together.
BATCH_METHODS = {
    "submit_mcp_jobs",
    "wait_for_mcp_jobs",
    "iter_mcp_jobs_as_completed",
    "get_mcp_batch_status",
    "cancel_mcp_batch",
}

#: Methods that hand over items as they come: a generator on the sync client, an async
#: generator on the async one.
STREAMS = {"stream_mcp_job_events", "iter_mcp_jobs_as_completed"}


def public(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and callable(member)
    }


def normalized(sig: inspect.Signature) -> list[tuple[str, object, object, str]]:
    """Parameters with the sync/async type names made equal."""
    out: list[tuple[str, object, object, str]] = []
    for p in sig.parameters.values():
        ann = str(p.annotation).replace("httpx.AsyncClient", "httpx.Client")
        out.append((p.name, p.kind, p.default, ann))
    return out


def test_both_clients_have_the_same_public_methods() -> None:
    sync, async_ = public(DeepExecClient), public(DeepExecAsyncClient)
    assert set(sync) >= REFERENCE_METHODS | BATCH_METHODS
    assert set(async_) == set(sync) | ASYNC_ONLY
    assert not set(sync) & ASYNC_ONLY


@pytest.mark.parametrize("name", [*sorted(public(DeepExecClient)), "__init__"])
def test_signatures_match(name: str) -> None:
    sync = inspect.signature(getattr(DeepExecClient, name))
    async_ = inspect.signature(getattr(DeepExecAsyncClient, name))
    assert normalized(sync) == normalized(async_)
    if name in STREAMS:
        assert sync.return_annotation.startswith("Iterator[")
        assert async_.return_annotation == "Async" + sync.return_annotation
    elif name != "__init__":
        assert sync.return_annotation == async_.return_annotation


@pytest.mark.parametrize("name", sorted(public(DeepExecAsyncClient)))
def test_async_methods_are_coroutines_and_the_stream_an_async_generator(name: str) -> None:
    method = getattr(DeepExecAsyncClient, name)
    if name in STREAMS:
        assert inspect.isasyncgenfunction(method)
        assert inspect.isgeneratorfunction(getattr(DeepExecClient, name))
    else:
        assert inspect.iscoroutinefunction(method)
        sync = getattr(DeepExecClient, name, None)
        assert sync is None or not inspect.iscoroutinefunction(sync)


def test_context_managers() -> None:
    assert inspect.iscoroutinefunction(DeepExecAsyncClient.__aenter__)
    assert inspect.iscoroutinefunction(DeepExecAsyncClient.__aexit__)
    assert callable(DeepExecClient.__enter__) and callable(DeepExecClient.__exit__)


def test_every_public_method_has_a_docstring() -> None:
    for cls in (DeepExecClient, DeepExecAsyncClient):
        assert cls.__doc__
        for name, member in public(cls).items():
            assert inspect.getdoc(member), f"{cls.__name__}.{name}"


def test_package_exports() -> None:
    expected = {
        "DeepExecClient",
        "DeepExecAsyncClient",
        "__version__",
        "JobStatus",
        "MCPJobResponse",
        "MCPJobStatusResponse",
        "MCPCancelJobResponse",
        "MCPJobListResponse",
        "MCPJobEvent",
        "JobError",
        "DeepExecError",
        "MCPError",
        "MCPAuthenticationError",
        "MCPConnectionError",
        "MCPTimeoutError",
        "MCPProtocolError",
        "MCPExecutionError",
        "MCPValidationError",
        "MCPJobNotFoundError",
        "MCPConflictError",
        "MCPRateLimitError",
        "MCPServerError",
        "JobWaitTimeoutError",
        "MCPBatchResponse",
        "MCPBatchJob",
        "MCPBatchStatusResponse",
        "MCPBatchCancelResponse",
        "MCPJobsWaitResponse",
    }
    assert expected <= set(deepexec_sdk.__all__)
    assert deepexec_sdk.__all__ == sorted(deepexec_sdk.__all__)
    for name in deepexec_sdk.__all__:
        assert hasattr(deepexec_sdk, name), name
    assert isinstance(deepexec_sdk.__version__, str) and deepexec_sdk.__version__


SERVER_MODULES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "psycopg",
    "psycopg_pool",
    "xllamacpp",
    "deepexec_server",
    "prometheus_client",
    "mcp",
)


def test_importing_the_sdk_loads_nothing_of_the_server() -> None:
    code = (
        "import json, sys\n"
        "import deepexec_sdk\n"
        "from deepexec_sdk import DeepExecClient, DeepExecAsyncClient\n"
        "DeepExecClient('http://127.0.0.1:1', 'k').close()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(res.stdout)
    assert "deepexec_sdk" in loaded
    leaked = [m for m in loaded if m.split(".")[0] in SERVER_MODULES]
    assert leaked == []
