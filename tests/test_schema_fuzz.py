"""Property-based run over the server's own OpenAPI schema: no input yields a 5xx."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.serverproc import VENV_BIN, ServerProcess


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "home").start()
    try:
        res = subprocess.run(
            [
                str(VENV_BIN / "schemathesis"),
                "run",
                f"{srv.base_url}/openapi.json",
                "-H",
                f"Authorization: Bearer {srv.api_key}",
                "-H",
                "DeepExec-Protocol: 1",
                "--checks",
                "not_a_server_error",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "40",
                "--seed",
                "1",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=srv.env,
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
        assert " passed" in res.stdout and " failed" not in res.stdout
        assert "Internal error" not in srv.log()
    finally:
        srv.stop()
