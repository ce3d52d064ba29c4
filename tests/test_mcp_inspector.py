"""An independent MCP client, the MCP Inspector CLI (Node, from npm; installed by
``scripts/setup-npm-client.sh``), lists DeepExec's tools and runs ``execute_code`` over both
transports: stdio (``deepexec mcp``) and Streamable HTTP (``/mcp`` of the real server), in the
Inspector's default 2025 era and in the 2026-07-28 era with the tasks extension."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import DEEPEXEC, ServerProcess

ROOT = Path(__file__).resolve().parent.parent
INSPECTOR = ROOT / ".tools" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None, reason="Node.js is not installed (the Inspector needs it)"
)


def inspector(server: ServerProcess, transport: str, *args: str) -> dict[str, Any]:
    """Run the Inspector CLI against ``server`` and return its JSON result."""
    assert INSPECTOR.exists(), "run scripts/setup.sh to install the MCP Inspector"
    if transport == "stdio":
        # The Inspector gives the server a minimal environment: hand it what locates the
        # credentials file, as an MCP host's config block would.
        env_args = [f"-e{k}={v}" for k, v in server.env.items() if k.startswith("XDG_")]
        target = [*env_args, "--transport", "stdio", DEEPEXEC, "mcp"]
    else:
        target = [
            f"{server.base_url}/mcp",
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {server.api_key}",
        ]
    res = subprocess.run(
        [str(INSPECTOR), "--cli", *target, *args, "--format", "json", "-q"],
        env={**os.environ, "MCP_INSPECTOR_SECRET_STORE": "memory", "HOME": str(server.home)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=server.home,
    )
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    out: dict[str, Any] = json.loads(res.stdout)
    result: dict[str, Any] = out.get("result", out)
    return result


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_inspector_lists_the_tools(server: ServerProcess, transport: str) -> None:
    result = inspector(server, transport, "--method", "tools/list")
    names = {t["name"] for t in result["tools"]}
    assert {"execute_code", "generate_text", "submit_job", "wait_job", "cancel_job"} <= names


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_inspector_runs_execute_code(server: ServerProcess, transport: str, era: str) -> None:
    result = inspector(
        server,
        transport,
        "--protocol-era",
        era,
        "--method",
        "tools/call",
        "--tool-name",
        "execute_code",
        "--tool-args-json",
        json.dumps({"code": "print(6 * 7)"}),
    )
    assert result.get("isError") in (None, False), result
    assert result["content"][0]["text"] == "42"
    assert result["structuredContent"]["stdout"] == "42\n"
