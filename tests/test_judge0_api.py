"""The Judge0 CE API on the real server: its information routes, authentication, field
errors, batches and cancel, and the official ``judge0`` PyPI client (0.0.8, unmodified)
connecting to it. (Submissions run to their verdicts through the official client:
see test_judge0_client.py.)"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serverproc import ServerProcess

judge0 = pytest.importorskip("judge0")


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, headers={"X-Auth-Token": server.api_key}, timeout=60
    ) as client:
        yield client


def test_the_official_client_connects(server: ServerProcess) -> None:
    """Its constructor reads /languages and /config_info into its own pydantic models."""
    client = judge0.Client(server.base_url, {"X-Auth-Token": server.api_key})
    assert client.version == "1.13.1"
    assert client.is_language_supported(judge0.LanguageAlias.PYTHON)
    assert client.get_language_id(judge0.LanguageAlias.PYTHON) == 71
    assert client.config.max_submission_batch_size == 20
    assert client.get_statuses()[3] == {"id": 4, "description": "Wrong Answer"}


def test_a_missing_or_unknown_key_is_judge0s_empty_401(server: ServerProcess) -> None:
    for headers in ({}, {"X-Auth-Token": "not-a-key"}):
        response = httpx.get(f"{server.base_url}/languages", headers=headers)
        assert (response.status_code, response.content) == (401, b"")
    with pytest.raises(RuntimeError, match="Authentication failed"):
        judge0.Client(server.base_url, {"X-Auth-Token": "not-a-key"})


def test_the_key_may_come_as_x_auth_user_or_a_query_parameter(
    server: ServerProcess, api: httpx.Client
) -> None:
    assert (
        httpx.get(f"{server.base_url}/about", headers={"X-Auth-User": server.api_key}).status_code
        == 200
    )
    response = httpx.get(f"{server.base_url}/languages?X-Auth-Token={server.api_key}")
    assert response.status_code == 200
    assert any(row["id"] == 71 for row in response.json())


def test_languages_and_one_language(api: httpx.Client) -> None:
    rows = api.get("/languages").json()
    ids = [row["id"] for row in rows]
    assert 71 in ids and ids == sorted(ids)
    python = api.get("/languages/71").json()
    assert python["source_file"] == "script.py" and python["is_archived"] is False
    assert api.get("/languages/4").status_code == 404


def test_field_errors_are_judge0s_hash(api: httpx.Client) -> None:
    response = api.post("/submissions", json={"source_code": "print(1)"})
    assert (response.status_code, response.json()) == (422, {"language_id": ["can't be blank"]})
    response = api.post(
        "/submissions", json={"source_code": "print(1)", "language_id": 71, "cpu_time_limit": 99}
    )
    assert response.json() == {"cpu_time_limit": ["must be less than or equal to 15"]}
    response = api.get("/submissions/job_nosuch?fields=token,nope")
    assert (response.status_code, response.json()) == (400, {"error": "invalid fields: [nope]"})


def test_a_batch_answers_each_item_and_too_many_is_refused(api: httpx.Client) -> None:
    response = api.post(
        "/submissions/batch", json={"submissions": [{"language_id": 71}, {"source_code": "x"}]}
    )
    assert response.status_code == 422
    assert response.json() == [
        {"source_code": ["can't be blank"]},
        {"language_id": ["can't be blank"]},
    ]
    too_many = {"submissions": [{"source_code": "1", "language_id": 71}] * 21}
    response = api.post("/submissions/batch", json=too_many)
    assert response.status_code == 400
    assert response.json() == {"error": "number of submissions in a batch cannot exceed 20"}


def test_an_unknown_token_is_a_404_and_batches_read_null(api: httpx.Client) -> None:
    assert api.get("/submissions/job_nosuch").status_code == 404
    assert api.get("/submissions/batch?tokens=job_a,job_b").json() == {"submissions": [None, None]}


def test_bad_base64_is_a_400(api: httpx.Client) -> None:
    body = {"source_code": "%%%", "language_id": 71}
    response = api.post("/submissions?base64_encoded=true", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": "source_code is not valid base64 of UTF-8 text"}


#: The C program of Judge0's API docs ("Create a submission"; its ``language_id`` 4 is an
#: archived GCC, 50 is 1.13.1's C (GCC 9.2.0)), and its base64 form from the same docs.
DOCS_C = (
    '#include <stdio.h>\n\nint main(void) {\n  char name[10];\n  scanf("%s", name);\n'
    '  printf("hello, %s\\n", name);\n  return 0;\n}'
)
DOCS_C_BASE64 = (
    "I2luY2x1ZGUgPHN0ZGlvLmg+CgppbnQgbWFpbih2b2lkKSB7CiAgY2hhciBuYW1lWzEwXTsKICBzY2FuZigi"
    "JXMiLCBuYW1lKTsKICBwcmludGYoImhlbGxvLCAlc1xuIiwgbmFtZSk7CiAgcmV0dXJuIDA7Cn0="
)


def test_golden_docs_examples_create_with_wait_plain_and_base64(api: httpx.Client) -> None:
    """Judge0's docs: ``POST /submissions?wait=true`` answers 201 with the default fields;
    the base64 example answers ``aGVsbG8sIHdvcmxkCg==`` (``hello, world\\n``)."""
    assert base64.b64decode(DOCS_C_BASE64).decode() == DOCS_C
    plain = api.post(
        "/submissions?base64_encoded=false&wait=true",
        json={"source_code": DOCS_C, "language_id": 50, "stdin": "world"},
    )
    assert plain.status_code == 201, plain.text
    body = plain.json()
    assert set(body) == {
        "stdout", "time", "memory", "stderr", "token", "compile_output", "message", "status",
    }  # fmt: skip
    assert body["stdout"] == "hello, world\n"
    assert body["status"] == {"id": 3, "description": "Accepted"}
    assert body["stderr"] is None and body["compile_output"] is None and body["message"] is None
    assert float(body["time"]) >= 0 and isinstance(body["memory"], int)
    encoded = api.post(
        "/submissions?base64_encoded=true&wait=true",
        json={"source_code": DOCS_C_BASE64, "language_id": 50, "stdin": "d29ybGQ="},
    ).json()
    assert encoded["stdout"] == "aGVsbG8sIHdvcmxkCg=="
    assert encoded["status"]["id"] == 3
    # Docs: "GET /submissions/{token}?fields=stdout,status_id" gives just those.
    token = api.post(
        "/submissions", json={"source_code": DOCS_C, "language_id": 50, "stdin": "Judge0"}
    ).json()["token"]
    for _ in range(200):
        got = api.get(f"/submissions/{token}?fields=stdout,status_id").json()
        if got["status_id"] > 2:
            break
        time.sleep(0.05)
    assert got == {"stdout": "hello, Judge0\n", "status_id": 3}


def test_golden_docs_example_executable_runs_a_binary(api: httpx.Client) -> None:
    """Judge0's language 44 ("Executable") runs ``source_code`` as a program binary: here a
    C program built on this host, sent base64-encoded, run in the sandbox like any job."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp, "m.c"), Path(tmp, "m")
        src.write_text('#include <stdio.h>\nint main(void){puts("binary ok");return 0;}\n')
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
        binary = base64.b64encode(exe.read_bytes()).decode()
    assert api.get("/languages/44").json()["name"] == "Executable"
    done = api.post(
        "/submissions?base64_encoded=true&wait=true&fields=stdout,status_id,source_code",
        json={"source_code": binary, "language_id": 44},
    ).json()
    assert done["status_id"] == 3, done
    assert base64.b64decode(done["stdout"]) == b"binary ok\n"
    assert done["source_code"] == binary  # the binary as it was sent, not the runner script
