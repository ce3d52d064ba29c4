"""The Judge0 CE 1.13.1 mapping (``compat/judge0_model.py``), pure: requests into jobs, jobs
into submissions, statuses, fields and the configuration the official client parses."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from deepexec_sdk.types import JobError, JobStatus, MCPJobStatusResponse
from deepexec_server.compat import judge0_info as info
from deepexec_server.compat import judge0_model as j0

HOST = [
    {"name": "python", "version": "Python 3.11.2"},
    {"name": "cpp", "version": "g++ (Debian 12.2.0-14) 12.2.0"},
    {"name": "java", "version": "openjdk 17.0.13 2024-10-15"},
]
LANGS = info.language_table(HOST)
MAXIMA = info.ServerMaxima(
    cpu_time_s=60, wall_time_s=300, memory_kb=2048 * 1024, processes=512, file_size_kb=1 << 20
)
T0 = datetime(2026, 12, 4, 5, 40, 51, 306789, tzinfo=UTC)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def request(**fields: Any) -> dict[str, Any]:
    return {"source_code": "print(1)", "language_id": 71, **fields}


def job(
    status: JobStatus = JobStatus.COMPLETED,
    test: dict[str, Any] | None = None,
    error: JobError | None = None,
    result: dict[str, Any] | None = None,
) -> MCPJobStatusResponse:
    done = status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)
    if result is None and test is not None:
        result = {"tests": [test]}
    return MCPJobStatusResponse(
        job_id="job_abc",
        name="judge0 71",
        job_type="code_execution",
        status=status,
        tags=["judge0", "judge0-lang-71"],
        created_at=T0,
        updated_at=T0,
        finished_at=T0 if done else None,
        error=error,
        result=result,
    )


def test_languages_are_the_1_13_1_ids_of_what_the_host_runs() -> None:
    rows = [lang.row() for lang in LANGS]
    assert rows == [
        {"id": 52, "name": "C++ (GCC 12.2.0)"},
        {"id": 53, "name": "C++ (GCC 12.2.0)"},
        {"id": 54, "name": "C++ (GCC 12.2.0)"},
        {"id": 62, "name": "Java (OpenJDK 17.0.13)"},
        {"id": 71, "name": "Python (3.11.2)"},
    ]
    assert LANGS[0].row(full=True)["source_file"] == "main.cpp"


def test_a_submission_becomes_a_one_test_code_job() -> None:
    job_request = j0.submission_request(
        request(stdin="world", expected_output="hello, world", command_line_arguments="-v 'a b'"),
        LANGS,
        MAXIMA,
        encoded=False,
    )
    assert job_request.job_type == "code_execution"
    assert job_request.data == {
        "code": "print(1)",
        "language": "python",
        "tests": [{"stdin": "world", "expected_output": "hello, world"}],
        "compare": "trailing_whitespace",
        "args": ["-v", "a b"],
    }
    assert job_request.timeout == 10  # Judge0's default wall time; no compile step
    assert "judge0" in job_request.tags and "judge0-lang-71" in job_request.tags


def test_base64_fields_are_decoded_and_limits_converted() -> None:
    job_request = j0.submission_request(
        {
            "source_code": b64("int main(){}"),
            "language_id": "54",
            "stdin": b64("1 2\n"),
            "cpu_time_limit": "2.5",
            "memory_limit": 256_000,
            "max_processes_and_or_threads": 30,
            "max_file_size": 2048,
            "wall_time_limit": 4,
        },
        LANGS,
        MAXIMA,
        encoded=True,
    )
    assert job_request.data["code"] == "int main(){}"
    assert job_request.data["tests"] == [{"stdin": "1 2\n", "expected_output": None}]
    assert job_request.data["limits"] == {
        "cpu_time_s": 4,  # 2.5 s + Judge0's default cpu_extra_time (1 s), rounded up
        "memory_mb": 250,
        "max_processes": 30,
        "max_file_size_mb": 2,
    }
    assert job_request.timeout == 4 + info.COMPILE_ALLOWANCE_S


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"source_code": "x"}, {"language_id": ["can't be blank"]}),
        (request(language_id=4), {"language_id": ["language with id 4 doesn't exist"]}),
        (request(language_id="abc"), {"language_id": ["is not a number"]}),
        (request(source_code=""), {"source_code": ["can't be blank"]}),
        (request(cpu_time_limit=16), {"cpu_time_limit": ["must be less than or equal to 15"]}),
        (request(memory_limit=1000), {"memory_limit": ["must be greater than or equal to 2048"]}),
        (request(wall_time_limit=0.5), {"wall_time_limit": ["must be greater than or equal to 1"]}),
        (request(callback_url=7), {"callback_url": ["is not a valid URL"]}),
        (request(enable_network=True), {"enable_network": ["is not allowed on this server"]}),
        (request(compiler_options="-O2"), {"compiler_options": ["are not enabled on this server"]}),
    ],
)  # fmt: skip
def test_invalid_submissions_get_judge0s_field_errors(
    body: dict[str, Any], errors: dict[str, list[str]]
) -> None:
    with pytest.raises(j0.Judge0Error) as raised:
        j0.submission_request(body, LANGS, MAXIMA, encoded=False)
    assert raised.value.status == 422
    assert raised.value.body() == errors


def test_the_servers_own_maxima_cap_judge0s() -> None:
    tight = info.ServerMaxima(
        cpu_time_s=2, wall_time_s=300, memory_kb=1 << 20, processes=512, file_size_kb=1 << 20
    )
    with pytest.raises(j0.Judge0Error) as raised:
        j0.submission_request(request(cpu_time_limit=3), LANGS, tight, encoded=False)
    assert raised.value.body() == {"cpu_time_limit": ["must be less than or equal to 2"]}


def test_bad_base64_is_a_400() -> None:
    with pytest.raises(j0.Judge0Error) as raised:
        j0.submission_request(request(source_code="%%%"), LANGS, MAXIMA, encoded=True)
    assert raised.value.status == 400
    assert raised.value.body() == {"error": "source_code is not valid base64 of UTF-8 text"}


@pytest.mark.parametrize(
    ("the_job", "status"),
    [
        (job(JobStatus.PENDING), 1),
        (job(JobStatus.RUNNING), 2),
        (job(test={"verdict": "accepted", "exit_code": 0}), 3),
        (job(test={"verdict": "wrong_answer", "exit_code": 0}), 4),
        (job(test={"verdict": "time_limit", "signal": "SIGKILL"}), 5),
        (job(JobStatus.FAILED, error=JobError(type="compile_error", message="x"),
             result={"compile_output": "x"}), 6),
        (job(test={"verdict": "runtime_error", "signal": "SIGSEGV"}), 7),
        (job(test={"verdict": "output_limit"}), 8),
        (job(test={"verdict": "runtime_error", "signal": "SIGFPE"}), 9),
        (job(test={"verdict": "runtime_error", "signal": "SIGABRT"}), 10),
        (job(test={"verdict": "runtime_error", "exit_code": 1}), 11),
        (job(test={"verdict": "memory_limit", "signal": "SIGKILL"}), 12),
        (job(JobStatus.FAILED, error=JobError(type="internal_error", message="x")), 13),
        (job(JobStatus.CANCELED), 13),
    ],
)  # fmt: skip
def test_statuses_follow_judge0s_ids(the_job: MCPJobStatusResponse, status: int) -> None:
    assert j0.status_of(the_job) == status


def test_all_fields_are_exactly_1_13_1s() -> None:
    data = {
        "code": "print(1)",
        "language": "python",
        "tests": [{"stdin": "", "expected_output": "1"}],
    }
    test = {"verdict": "accepted", "stdout": "1\n", "stderr": "", "exit_code": 0,
            "cpu_time_ms": 12, "wall_time_ms": 40, "memory_peak_kb": 9000}  # fmt: skip
    out = j0.submission(job(test=test), data, LANGS, j0.parse_fields("*"), encoded=False)
    assert len(out) == 35 and list(out) == list(j0.ALL_FIELDS)
    assert out["status"] == {"id": 3, "description": "Accepted"}
    assert out["language"] == {"id": 71, "name": "Python (3.11.2)"}
    assert (out["time"], out["wall_time"], out["memory"]) == ("0.012", "0.040", 9000)
    assert out["created_at"] == "2026-12-04T05:40:51.306Z"
    assert out["stdout"] == "1\n" and out["expected_output"] == "1"
    assert out["token"] == "job_abc" and out["message"] is None


def test_default_fields_and_base64_answers() -> None:
    data = {
        "code": "print(1)",
        "language": "python",
        "tests": [{"stdin": "", "expected_output": None}],
    }
    test = {"verdict": "runtime_error", "stdout": "", "stderr": "boom\n", "exit_code": 3}
    out = j0.submission(job(test=test), data, LANGS, j0.parse_fields(None), encoded=True)
    assert list(out) == list(j0.DEFAULT_FIELDS)
    assert base64.b64decode(out["stderr"]) == b"boom\n"
    assert base64.b64decode(out["message"]) == b"Exited with error status 3"
    assert out["status"] == {"id": 11, "description": "Runtime Error (NZEC)"}


def test_an_unknown_field_is_judge0s_400() -> None:
    with pytest.raises(j0.Judge0Error) as raised:
        j0.parse_fields("token,nope,status,bad")
    assert (raised.value.status, raised.value.body()) == (
        400,
        {"error": "invalid fields: [nope, bad]"},
    )


def test_the_official_client_parses_the_configuration_and_languages() -> None:
    """judge0 0.0.8's own models accept /config_info and /languages as this server answers."""
    base_types = pytest.importorskip("judge0.base_types")
    config = base_types.Config(**info.config_info(MAXIMA))
    assert config.max_submission_batch_size == info.MAX_BATCH
    assert set(info.config_info(MAXIMA)) == set(base_types.Config.model_fields)
    assert [base_types.Language(**lang.row()).id for lang in LANGS] == [52, 53, 54, 62, 71]
