"""The pure functions that decide: transitions, outcome → status, fingerprints, progress
clamping, event fan-out under load, settings parsing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from deepexec_sdk.types import JobStatus, JobSubmitRequest, MCPJobEvent
from deepexec_server.domain import TRANSITIONS, InvalidTransition, JobError, check_transition
from deepexec_server.engine.admission import request_fingerprint
from deepexec_server.engine.hub import QUEUE_SIZE, EventHub
from deepexec_server.engine.outcomes import clamp_progress, decide_status
from deepexec_server.errors import TooManyRequests
from deepexec_server.executors.base import Outcome
from deepexec_server.settings import Settings, SettingsError

S = JobStatus


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        (S.PENDING, S.RUNNING, True),
        (S.PENDING, S.CANCELED, True),
        (S.RUNNING, S.COMPLETED, True),
        (S.RUNNING, S.FAILED, True),
        (S.RUNNING, S.CANCELED, True),
        (S.PENDING, S.COMPLETED, False),
        (S.RUNNING, S.PENDING, False),
        (S.COMPLETED, S.FAILED, False),
        (S.CANCELED, S.RUNNING, False),
        (S.FAILED, S.COMPLETED, False),
    ],
)
def test_transition_table(current: JobStatus, target: JobStatus, allowed: bool) -> None:
    if allowed:
        check_transition(current, target)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(current, target)


def test_terminal_statuses_have_no_way_out() -> None:
    for status in (S.COMPLETED, S.FAILED, S.CANCELED):
        assert TRANSITIONS[status] == frozenset()
        assert status.is_terminal
    assert not S.PENDING.is_terminal and not S.RUNNING.is_terminal


def test_status_compares_and_formats_as_a_plain_string() -> None:
    assert S.COMPLETED == "COMPLETED"
    assert f"{S.FAILED}" == "FAILED" and str(S.CANCELED) == "CANCELED"
    assert S.RUNNING in ["RUNNING", "PENDING"]


def test_outcome_decides_the_terminal_status() -> None:
    err = JobError("timeout", "too slow")
    assert decide_status(Outcome({"stdout": ""})) is S.COMPLETED
    assert decide_status(Outcome({}, err)) is S.FAILED
    assert decide_status(Outcome({}, None, canceled=True)) is S.CANCELED
    assert decide_status(Outcome({}, err, canceled=True)) is S.CANCELED


def test_fingerprint_tells_a_retry_from_another_request() -> None:
    a = JobSubmitRequest(name="n", job_type="code_execution", data={"code": "1", "x": [1, 2]})
    b = JobSubmitRequest(name="n", job_type="code_execution", data={"x": [1, 2], "code": "1"})
    c = JobSubmitRequest(name="n", job_type="code_execution", data={"code": "2", "x": [1, 2]})
    assert request_fingerprint(a) == request_fingerprint(b)
    assert request_fingerprint(a) != request_fingerprint(c)


@pytest.mark.parametrize(
    ("raw", "clamped"), [(None, None), (-5, 0), (0, 0), (42.9, 42), (100, 100), (250, 100)]
)
def test_progress_is_clamped(raw: float | None, clamped: int | None) -> None:
    assert clamp_progress(raw) == clamped


async def test_slow_subscriber_loses_output_but_never_the_final_status() -> None:
    hub = EventHub()
    sub = hub.subscribe("job_1")
    for i in range(QUEUE_SIZE + 50):
        hub.publish(MCPJobEvent(type="output", job_id="job_1", stream="stdout", text=str(i)))
    hub.publish(MCPJobEvent(type="status", job_id="job_1"))
    hub.publish(MCPJobEvent(type="output", job_id="job_2", stream="stdout", text="other job"))
    events = []
    while (shared := await sub.get(0.01)) is not None:
        events.append(shared.event)
    assert len(events) == QUEUE_SIZE
    assert events[-1].type == "status"
    assert all(e.job_id == "job_1" for e in events)
    sub.close()
    assert not hub.has_subscribers("job_1")


async def test_subscription_times_out_with_none() -> None:
    sub = EventHub().subscribe("job_1")
    t0 = asyncio.get_running_loop().time()
    assert await sub.get(0.05) is None
    assert asyncio.get_running_loop().time() - t0 >= 0.04


def test_settings_from_environment(tmp_path: Path) -> None:
    env = {
        "DEEPEXEC_PORT": "9000",
        "DEEPEXEC_CONCURRENCY": "code_execution=5",
        "DEEPEXEC_AUTH_ENABLED": "false",
        "DEEPEXEC_DATA_DIR": str(tmp_path),
        "DEEPEXEC_LEASE_SECONDS": "2.5",
    }
    s = Settings.from_env(env)
    assert s.port == 9000
    assert s.concurrency == {"code_execution": 5, "text_generation": 1}
    assert s.auth_enabled is False
    assert s.lease_seconds == 2.5
    assert Settings.from_env(env, port=1234).port == 1234


def test_code_limits_from_environment_merge_over_the_defaults() -> None:
    s = Settings.from_env(
        {
            "DEEPEXEC_CODE_LIMITS_DEFAULT": "memory_mb=256, cpu_time_s=10",
            "DEEPEXEC_CODE_LIMITS_MAX": "memory_mb=1024",
        }
    )
    assert s.code_limits_default == {
        "memory_mb": 256, "max_processes": 128, "max_file_size_mb": 64, "disk_mb": 256,
        "cpu_time_s": 10,
    }  # fmt: skip
    assert s.code_limits_max["memory_mb"] == 1024
    assert s.code_limits_max["max_processes"] == Settings().code_limits_max["max_processes"]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DEEPEXEC_PORT": "eighty"}, "DEEPEXEC_PORT"),
        ({"DEEPEXEC_AUTH_ENABLED": "maybe"}, "DEEPEXEC_AUTH_ENABLED"),
        ({"DEEPEXEC_CONCURRENCY": "code_execution=0"}, "DEEPEXEC_CONCURRENCY"),
        ({"DEEPEXEC_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"DEEPEXEC_DEFAULT_TIMEOUT": "7200"}, "default_timeout"),
        ({"DEEPEXEC_CODE_LIMITS_MAX": "memory=5"}, "DEEPEXEC_CODE_LIMITS_MAX: unknown name"),
        ({"DEEPEXEC_CODE_LIMITS_DEFAULT": "memory_mb=0"}, "DEEPEXEC_CODE_LIMITS_DEFAULT"),
        ({"DEEPEXEC_CODE_LIMITS_MAX": "memory_mb=100"}, r"default memory_mb \(512\) is above"),
        ({"DEEPEXEC_MAX_OUTPUT_BYTES": str(1 << 30)}, "default max_output_bytes"),
        (
            {"DEEPEXEC_CODE_LIMITS_DEFAULT": "max_output_bytes=10"},
            "set the default max_output_bytes with max_output_bytes",
        ),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_listening_socket_is_tcp_so_asyncio_disables_nagle() -> None:
    # asyncio turns on TCP_NODELAY only for sockets whose protocol is IPPROTO_TCP; a socket made
    # with protocol 0 made every response wait ~40 ms for a delayed ACK.
    import socket

    from deepexec_server.cli import listen_socket

    sock = listen_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


async def test_group_commit_batches_what_queues_and_isolates_a_bad_item() -> None:
    from deepexec_server.store._batch import GroupCommit

    batches: list[list[int]] = []

    async def write_one(item: int) -> int:
        await asyncio.sleep(0.01)
        if item == 13:
            raise ValueError("unlucky")
        return item * 10

    async def write_batch(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        if 13 in items:
            raise ValueError("one bad row spoils the transaction")
        return [i * 10 for i in items]

    group = GroupCommit(write_batch, write_one, max_batch=4)
    results = await asyncio.gather(*(group.submit(i) for i in range(10)), return_exceptions=True)
    assert results == [i * 10 for i in range(10)]
    # 0 went alone; 1-9 queued meanwhile and were written 4 at a time.
    assert batches == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9 was a batch of one: written alone
    batches.clear()
    results = await asyncio.gather(
        *(group.submit(i) for i in (11, 12, 13, 14)), return_exceptions=True
    )
    assert results[:2] == [110, 120] and results[3] == 140
    assert isinstance(results[2], ValueError) and str(results[2]) == "unlucky"
    assert batches == [[12, 13, 14]]


async def test_a_waiter_for_the_end_is_not_woken_by_progress_or_output() -> None:
    hub = EventHub()
    waiter = hub.subscribe("job_1", statuses_only=True)
    listener = hub.subscribe("job_1")
    for i in range(100):
        hub.publish(MCPJobEvent(type="progress", job_id="job_1", progress=i))
        hub.publish(MCPJobEvent(type="output", job_id="job_1", stream="stdout", text="x"))
    assert waiter.queue.empty()
    assert listener.queue.qsize() == 200
    hub.publish(MCPJobEvent(type="status", job_id="job_1"))
    shared = await waiter.get(0.01)
    assert shared is not None and shared.event.type == "status"
    waiter.close()
    assert hub.has_subscribers("job_1")  # the listener still takes progress
    listener.close()
    assert not hub.has_subscribers("job_1")


async def test_an_event_is_encoded_once_for_all_its_subscribers() -> None:
    hub = EventHub()
    subs = [hub.subscribe("job_1") for _ in range(50)]
    calls = []

    def encode(event: MCPJobEvent) -> bytes:
        calls.append(event)
        return event.type.encode()

    hub.publish(MCPJobEvent(type="progress", job_id="job_1", progress=5))
    for sub in subs:
        shared = await sub.get(0.01)
        assert shared is not None and shared.encoded(encode) == b"progress"
    assert len(calls) == 1


def test_subscribers_are_capped_per_job_and_per_tenant_and_closing_frees_a_place() -> None:
    hub = EventHub(max_per_job=2, max_per_tenant=3)
    a = [hub.subscribe("j1", tenant_id="t1") for _ in range(2)]
    with pytest.raises(TooManyRequests, match="MAX_SUBSCRIBERS_PER_JOB"):
        hub.subscribe("j1", tenant_id="t1", statuses_only=True)
    hub.subscribe("j2", tenant_id="t1")
    with pytest.raises(TooManyRequests, match="MAX_SUBSCRIBERS_PER_TENANT"):
        hub.subscribe("j3", tenant_id="t1")
    hub.subscribe("j3", tenant_id="t2")  # another tenant
    hub.subscribe("j1")  # the engine's own (a cancel) is not counted
    a[0].close()
    a[0].close()  # idempotent: frees one place, not two
    hub.subscribe("j3", tenant_id="t1")
    with pytest.raises(TooManyRequests):
        hub.subscribe("j4", tenant_id="t1")


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("7d", 7 * 86400.0), ("12h", 43200.0), ("30m", 1800.0), ("45s", 45.0), ("90", 90.0),
     ("0", 0.0), ("never", 0.0), ("1.5h", 5400.0)],
)  # fmt: skip
def test_result_retention_reads_durations(raw: str, seconds: float) -> None:
    env = {"DEEPEXEC_RESULT_RETENTION": raw}
    assert Settings.from_env(env).result_retention == seconds


@pytest.mark.parametrize(
    ("raw", "size"),
    [("4GiB", 4 * 1024**3), ("500MiB", 500 * 1024**2), ("2GB", 2 * 10**9), ("1234", 1234),
     ("0", 0)],
)  # fmt: skip
def test_tenant_result_bytes_reads_sizes(raw: str, size: int) -> None:
    assert Settings.from_env({"DEEPEXEC_TENANT_RESULT_BYTES": raw}).tenant_result_bytes == size


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("RESULT_RETENTION", "7 days"),
        ("RESULT_RETENTION", "-1d"),
        ("TENANT_RESULT_BYTES", "4 parsecs"),
        ("TENANT_RESULT_BYTES", "-5"),
        ("MAX_SUBSCRIBERS_PER_JOB", "-1"),
        ("PROGRESS_EVENTS_PER_SECOND", "0"),
    ],
)
def test_bad_retention_cap_and_event_settings_are_refused_by_name(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=name.lower() + "|DEEPEXEC_" + name):
        Settings.from_env({f"DEEPEXEC_{name}": raw})


def test_results_are_kept_seven_days_and_four_gib_per_tenant_by_default() -> None:
    settings = Settings()
    assert settings.result_retention == 7 * 86400
    assert settings.tenant_result_bytes == 4 * 1024**3
