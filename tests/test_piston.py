"""The Piston v2 API: its validation texts and units (pure), golden examples from Piston's own
documentation, and Piston's real clients, unmodified, against the real server: the PyPI
``aiopyston`` (bare key in ``Authorization``, trailing slashes, the ``/api/v2/piston/`` prefix)
and the npm ``piston-client`` (no key, no ``Content-Type``; installed by ``scripts/setup.sh``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyston import File, PystonClient

from deepexec_server.compat.piston import (
    Maxima,
    PistonError,
    Runtime,
    execute_request,
    find_runtime,
    runtime_table,
    semver_of,
)
from tests.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
PISTON_CLIENT = ROOT / ".tools" / "piston-client" / "node_modules" / "piston-client" / "index.js"

HOST = [
    {"name": "python", "version": "3.11.2"},
    {"name": "javascript", "version": "20.20.2"},
    {"name": "cpp", "version": "12.2.0-14+deb12u1"},
    {"name": "cobol", "version": "1.0"},
]
MAXIMA = Maxima(run_timeout_ms=3_600_000, run_cpu_ms=3_600_000, run_memory_bytes=8192 * 2**20)


# --- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "semver"),
    [("3.11.2", "3.11.2"), ("12.2.0-14+deb12u1", "12.2.0"), ("1.19", "1.19.0"), (None, "0.0.0")],
)
def test_tool_versions_become_semver(raw: str | None, semver: str) -> None:
    assert semver_of(raw) == semver


def test_runtimes_use_pistons_names_aliases_and_runtime() -> None:
    table = {rt.language: rt for rt in runtime_table(HOST)}
    assert set(table) == {"python", "javascript", "c++"}  # nothing Piston does not know
    assert table["c++"].to_json() == {
        "language": "c++",
        "version": "12.2.0",
        "aliases": ["cpp", "g++"],
        "runtime": "gcc",
    }
    assert "runtime" not in table["python"].to_json()
    assert table["javascript"].runtime == "node"


@pytest.mark.parametrize(
    ("language", "version", "found"),
    [
        ("python", "*", "3.11.2"),
        ("py", "3.x", "3.11.2"),
        ("python3", "3.11.2", "3.11.2"),
        ("node-js", ">=18", "20.20.2"),
        ("python", "3.12.0", None),
        ("ruby", "*", None),
    ],
)
def test_version_is_a_semver_range_over_names_and_aliases(
    language: str, version: str, found: str | None
) -> None:
    rt = find_runtime(runtime_table(HOST), language, version)
    assert (rt.version if rt else None) == found


def runtimes() -> list[Runtime]:
    return runtime_table(HOST)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "language is required as a string"),
        ({"language": "python"}, "version is required as a string"),
        ({"language": "python", "version": "*"}, "files is required as an array"),
        (
            {"language": "python", "version": "*", "files": [{"name": "a"}]},
            "files[0].content is required as a string",
        ),
        (
            {"language": "ruby", "version": "3", "files": [{"content": ""}]},
            "ruby-3 runtime is unknown",
        ),
        (
            {
                "language": "python",
                "version": "*",
                "files": [{"content": "cHJpbnQoMSk=", "encoding": "base64"}],
            },
            "files must include at least one utf8 encoded file",
        ),
        (
            {"language": "python", "version": "*", "files": [{"content": ""}], "run_timeout": "x"},
            "If specified, run_timeout must be a number",
        ),
        (
            {"language": "python", "version": "*", "files": [{"content": ""}], "run_timeout": -5},
            "run_timeout must be non-negative",
        ),
        (
            {
                "language": "python",
                "version": "*",
                "files": [{"content": ""}],
                "run_memory_limit": 2**40,
            },
            f"run_memory_limit cannot exceed the configured limit of {8192 * 2**20}",
        ),
    ],
)
def test_invalid_requests_get_pistons_own_messages(body: dict[str, Any], message: str) -> None:
    with pytest.raises(PistonError) as err:
        execute_request(body, runtimes(), MAXIMA)
    assert err.value.status == 400
    assert err.value.message == message


def test_pistons_units_become_the_jobs_limits() -> None:
    rt, req = execute_request(
        {
            "language": "c++",
            "version": "*",
            "files": [
                {"name": "main.cpp", "content": "int main() {}"},
                {"name": "data.bin", "content": "00ff", "encoding": "hex"},
            ],
            "stdin": "in",
            "args": ["a"],
            "compile_timeout": 10_000,
            "run_timeout": 2_500,
            "run_cpu_time": 1_500,
            "run_memory_limit": 100 * 2**20 + 1,
            "compile_memory_limit": -1,
        },
        runtimes(),
        MAXIMA,
    )
    assert rt.language == "c++"
    assert req.job_type == "code_execution" and req.tags == ["piston"]
    assert req.timeout == 13  # compile and run, in whole seconds
    assert req.data["language"] == "cpp"
    assert req.data["stdin"] == "in" and req.data["args"] == ["a"]
    assert req.data["limits"] == {"cpu_time_s": 2, "memory_mb": 101}
    assert req.data["files"] == {"data.bin": {"content": "AP8=", "encoding": "base64"}}


def test_minus_one_and_absent_limits_are_the_servers_defaults() -> None:
    _, req = execute_request(
        {"language": "py", "version": "*", "files": [{"content": "print(1)"}], "run_timeout": -1},
        runtimes(),
        MAXIMA,
    )
    assert "limits" not in req.data
    assert req.timeout == 3  # Piston's default run timeout, 3,000 ms


# --- the real server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose operator lets keyless Piston requests run as the tenant ``piston``."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("piston"), env={"DEEPEXEC_PISTON_TENANT": "piston"}
    ).start()
    yield srv
    srv.stop()


def post(server: ServerProcess, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/v2/execute",
        content=json.dumps(body),
        headers=headers,
        timeout=120,
    )


def test_golden_readme_request_runs_with_its_arguments(server: ServerProcess) -> None:
    # Piston's readme example, with the version range this host can satisfy.
    body = {
        "language": "js",
        "version": "*",
        "files": [{"name": "my_cool_code.js", "content": "console.log(process.argv.slice(2))"}],
        "stdin": "",
        "args": ["1", "2", "3"],
        "compile_timeout": 10000,
        "run_timeout": 3000,
        "compile_cpu_time": 10000,
        "run_cpu_time": 3000,
        "compile_memory_limit": -1,
        "run_memory_limit": -1,
    }
    res = post(server, body, authorization=server.api_key)
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["language"] == "javascript" and out["version"].count(".") == 2
    assert "compile" not in out
    run = out["run"]
    assert run["stdout"] == "[ '1', '2', '3' ]\n"
    assert run["output"] == run["stdout"] and run["stderr"] == ""
    assert run["code"] == 0 and run["signal"] is None and run["status"] is None
    assert isinstance(run["wall_time"], int | float)


def test_golden_runtimes_and_unknown_runtime(server: ServerProcess) -> None:
    listed = httpx.get(
        f"{server.base_url}/api/v2/runtimes/", headers={"authorization": server.api_key}
    )
    assert listed.status_code == 200
    names = {rt["language"] for rt in listed.json()}
    assert {"python", "javascript", "bash"} <= names
    res = post(
        server,
        {"language": "python", "version": "2.7.18", "files": [{"content": "print 1"}]},
        authorization=f"Bearer {server.api_key}",
    )
    assert res.status_code == 400
    assert res.json() == {"message": "python-2.7.18 runtime is unknown"}


def test_timeouts_signals_and_the_job_behind_each_request(server: ServerProcess) -> None:
    key = server.api_key
    slow = post(
        server,
        {
            "language": "python",
            "version": "3",
            "files": [{"content": "import time\nprint('started', flush=True)\ntime.sleep(30)"}],
            "run_timeout": 1000,
        },
        authorization=key,
    ).json()["run"]
    assert slow["status"] == "TO" and slow["signal"] == "SIGKILL" and slow["code"] is None
    assert slow["stdout"] == "started\n"
    killed = post(
        server,
        {
            "language": "bash",
            "version": "*",
            "files": [{"content": "kill -SEGV $$"}],
        },
        authorization=key,
    ).json()["run"]
    assert killed["status"] == "SG" and killed["signal"] == "SIGSEGV"
    # Each request was an ordinary job of the key's tenant, tagged piston.
    jobs = httpx.get(
        f"{server.base_url}/v1/jobs",
        params={"tag": "piston", "limit": 5},
        headers={"authorization": f"Bearer {key}"},
    ).json()["jobs"]
    assert len(jobs) >= 2 and all("piston" in j["tags"] for j in jobs)


def test_without_a_key_piston_is_refused_unless_the_operator_names_a_tenant(
    server: ServerProcess, keyless: ServerProcess
) -> None:
    body = {"language": "python", "version": "*", "files": [{"content": "print(2)"}]}
    refused = post(server, body)
    assert refused.status_code == 401
    assert "API key" in refused.json()["message"]
    allowed = post(keyless, body)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["run"]["stdout"] == "2\n"
    wrong = post(keyless, body, authorization="not-a-key")
    assert wrong.status_code == 401


HELLO = {
    "python": 'print("hello from python")',
    "javascript": 'console.log("hello from javascript")',
    "c++": '#include <cstdio>\nint main() { std::puts("hello from c++"); }',
}
BROKEN = {"c++": "int main() { return missing; }"}
CRASHING = {
    "python": "raise SystemExit(3)",
    "javascript": "process.exit(3)",
    "c++": "int main() { return 3; }",
}


async def test_aiopyston_runs_hello_world_a_compile_error_and_a_runtime_error(
    server: ServerProcess,
) -> None:
    client = PystonClient(api_key=server.api_key, base_url=f"{server.base_url}/api/v2/piston/")
    try:
        languages = await client.languages()
        missing = {"python", "javascript", "c++"} - languages
        if missing:
            pytest.skip(f"this host lacks {missing}")
        for language, code in HELLO.items():
            out = await client.execute(language, [File(code)])
            assert out.run_stage is not None
            assert out.run_stage.stdout == f"hello from {language}\n", out.raw_json
            assert out.run_stage.code == 0
        broken = await client.execute("c++", [File(BROKEN["c++"])])
        assert broken.compile_stage is not None and broken.compile_stage.code != 0
        assert "missing" in broken.compile_stage.output
        assert broken.raw_json["run"] == broken.raw_json["compile"]
        for language, code in CRASHING.items():
            out = await client.execute(language, [File(code)])
            assert out.run_stage is not None and out.run_stage.code == 3, out.raw_json
            assert out.raw_json["run"]["status"] == "RE"
    finally:
        await client.close_session()
        # The client's __del__ schedules another close on its loop: collect it while the loop
        # still runs, so that nothing is left to fail after the test.
        del client
        gc.collect()
        await asyncio.sleep(0.01)


NODE_SCRIPT = """
import piston from {module};
const client = piston({{ server: {server} }});
const out = {{}};
for (const [language, code] of Object.entries({programs})) {{
  out[language] = await client.execute(language, code, {{ args: [] }});
}}
console.log(JSON.stringify(out));
"""


def run_piston_client(server: ServerProcess, programs: dict[str, str], tmp: Path) -> Any:
    script = tmp / "run.mjs"
    script.write_text(
        NODE_SCRIPT.format(
            module=json.dumps(str(PISTON_CLIENT)),
            server=json.dumps(server.base_url),
            programs=json.dumps(programs),
        )
    )
    done = subprocess.run(
        ["node", str(script)], capture_output=True, text=True, timeout=180, check=True
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(
    not PISTON_CLIENT.exists() or shutil.which("node") is None,
    reason="needs node and piston-client (scripts/setup.sh installs it)",
)
def test_piston_client_runs_hello_world_a_compile_error_and_a_runtime_error(
    keyless: ServerProcess, tmp_path: Path
) -> None:
    hello = run_piston_client(keyless, HELLO, tmp_path)
    for language in HELLO:
        assert hello[language]["run"]["stdout"] == f"hello from {language}\n", hello[language]
    broken = run_piston_client(keyless, BROKEN, tmp_path)["c++"]
    assert broken["compile"]["status"] == "RE" and "missing" in broken["compile"]["stderr"]
    crashed = run_piston_client(keyless, CRASHING, tmp_path)
    for language in CRASHING:
        assert crashed[language]["run"]["code"] == 3
        assert crashed[language]["run"]["status"] == "RE"
