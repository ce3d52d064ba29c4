"""Webhooks as a receiver sees them: the real server sends a job's end to a receiver on
loopback, signed, and the ``standardwebhooks`` library (Standard Webhooks' reference) verifies
every message; retries, a kill and restart mid-retry, 410, the SSRF guard, redirects, key
rotation, tenant endpoints with event filters, Judge0's ``callback_url``, and PostgreSQL."""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from deepexec_sdk import DeepExecClient
from deepexec_sdk.errors import DeepExecError
from deepexec_server.webhooks import guard
from tests.serverproc import ServerProcess

#: Quick retries for the tests: 0.4 s, 0.8 s, 1.6 s, 3.2 s after each failed attempt.
FAST = {
    "DEEPEXEC_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    "DEEPEXEC_WEBHOOK_RETRY_SCHEDULE": "0.4,0.8,1.6,3.2",
    "DEEPEXEC_WEBHOOK_TIMEOUT_SECONDS": "0.5",
}
PG = os.environ.get("DEEPEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server on loopback that records every request and answers with ``script``'s
    next status (the last one once it runs out); a status of 0 means: hold the request for a
    second, past the sender's timeout, then answer 200."""

    script: list[int] = field(default_factory=lambda: [200])
    headers: dict[int, dict[str, str]] = field(default_factory=dict)
    got: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> int:
        with self.lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def wait_for(self, n: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    return list(self.got)
            time.sleep(0.02)
        raise AssertionError(f"{n} requests expected within {timeout} s, got {len(self.got)}")


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            with rec.lock:
                rec.got.append(
                    Received(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                        time.monotonic(),
                    )
                )
            status = rec.answer()
            if status == 0:
                time.sleep(1.0)
                status = 200
            self.send_response(status)
            for name, value in rec.headers.get(status, {}).items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        do_POST = do_PUT = do_GET = _any

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "home", env=FAST).start()
    try:
        yield srv
    finally:
        srv.stop()


def verified(got: Received, secret: str) -> Any:
    """The message's payload, once the reference library verified its signature."""
    return Webhook(secret).verify(got.body, got.headers)


def deliveries(c: DeepExecClient, job_id: str, n: int, done: Callable[[Any], bool]) -> Any:
    """The job's delivery log once its first ``n`` deliveries satisfy ``done``."""
    deadline = time.monotonic() + 20
    while True:
        log = c.get_mcp_job_webhooks(job_id).deliveries
        if len(log) >= n and all(done(d) for d in log[:n]):
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries of {job_id} never settled: {log}")
        time.sleep(0.05)


def test_a_jobs_end_reaches_its_webhook_url_signed(
    server: ServerProcess, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        job = c.submit_mcp_job(
            "hook", "code_execution", {"code": "print('hi')"}, webhook_url=f"{url}/done?x=1"
        )
        (got,) = rec.wait_for(1)
        key = c.get_webhook("job-urls")
        assert key.url is None and key.secret and key.secret.startswith("whsec_")
        payload = verified(got, key.secret)
        assert got.method == "POST" and got.path == "/done?x=1"
        assert got.headers["content-type"] == "application/json"
        assert payload["type"] == "job.completed"
        assert payload["data"]["job_id"] == job.job_id
        assert payload["data"]["status"] == "COMPLETED"
        assert payload["data"]["result"]["stdout"] == "hi\n"
        assert payload["timestamp"].endswith("Z")
        assert got.headers["webhook-id"].startswith("msg_")
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + base64.b64encode(b"k" * 32).decode()).verify(got.body, got.headers)
        (d,) = deliveries(c, job.job_id, 1, lambda d: d.state == "delivered")
        assert d.id == got.headers["webhook-id"]
        assert d.url == f"{url}/done?x=1" and d.endpoint_id is None
        assert [(a.attempt, a.status_code, a.error) for a in d.attempts] == [(1, 200, None)]
        assert d.delivered_at is not None and d.next_attempt_at is None


def test_failed_attempts_are_retried_with_growing_delays(
    server: ServerProcess, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.script = [500, 0, 503, 200]  # a 500, a timeout, a 503, then success
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        job = c.submit_mcp_job("retried", "code_execution", {"code": "1"}, webhook_url=url)
        got = rec.wait_for(4, timeout=20)
        secret = c.get_webhook("job-urls").secret
        assert secret
        assert len({g.headers["webhook-id"] for g in got}) == 1
        assert len({g.body for g in got}) == 1  # the same message every time
        for g in got:
            verified(g, secret)  # each attempt is signed with its own timestamp
        gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
        # The waits after each failure: 0.4 s, 0.8 s, 1.6 s (jittered by up to a tenth); the
        # second failure was a timeout, which took the sender's 0.5 s first.
        waits = [gaps[0], gaps[1] - 0.5, gaps[2]]
        for wait, planned in zip(waits, (0.4, 0.8, 1.6), strict=True):
            assert 0.85 * planned <= wait <= 1.1 * planned + 0.25, (waits, gaps)
        assert waits[0] < waits[1] < waits[2], waits
        (d,) = deliveries(c, job.job_id, 1, lambda d: d.state == "delivered")
        codes = [a.status_code for a in d.attempts]
        assert codes == [500, None, 503, 200]
        assert "no answer within 0.5 s" in (d.attempts[1].error or "")
        assert d.attempts[0].error == "answered 500"
    time.sleep(0.6)  # the timed-out request's late answer does not count twice
    assert len(rec.got) == 4


def test_a_delivery_is_given_up_past_the_schedule(
    server: ServerProcess, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.script = [500]
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        job = c.submit_mcp_job("doomed", "code_execution", {"code": "1"}, webhook_url=url)
        (d,) = deliveries(c, job.job_id, 1, lambda d: d.state == "failed")
        assert len(d.attempts) == 5  # the first, then one per entry of the schedule
        assert len(rec.got) == 5


def test_a_delivery_survives_a_killed_server(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.script = [500, 200]
    env = {**FAST, "DEEPEXEC_WEBHOOK_RETRY_SCHEDULE": "3"}
    srv = ServerProcess(tmp_path / "home", env=env).start()
    try:
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as c:
            job = c.submit_mcp_job("durable", "code_execution", {"code": "1"}, webhook_url=url)
            deliveries(c, job.job_id, 1, lambda d: len(d.attempts) == 1)
        srv.kill9()  # between the failed attempt and its retry, due in about 3 s
        assert len(rec.got) == 1
        srv.start()
        got = rec.wait_for(2, timeout=20)
        assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as c:
            (d,) = deliveries(c, job.job_id, 1, lambda d: d.state == "delivered")
            assert [a.status_code for a in d.attempts] == [500, 200]
    finally:
        srv.stop()


def test_a_410_disables_the_endpoint(server: ServerProcess, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.script = [410, 200]
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        endpoint = c.create_webhook(f"{url}/tenant")
        assert endpoint.enabled and endpoint.events is None and endpoint.secret
        first = c.submit_mcp_job("gone", "code_execution", {"code": "1"})
        (got,) = rec.wait_for(1)
        assert verified(got, endpoint.secret)["data"]["job_id"] == first.job_id
        (d,) = deliveries(c, first.job_id, 1, lambda d: d.state == "failed")
        assert d.endpoint_id == endpoint.id and [a.status_code for a in d.attempts] == [410]
        disabled = c.get_webhook(endpoint.id)
        assert not disabled.enabled and "410" in (disabled.disabled_reason or "")
        second = c.execute_code_and_wait("1", max_wait_time=30)
        time.sleep(0.5)
        assert c.get_mcp_job_webhooks(second.job_id).deliveries == []
        assert len(rec.got) == 1
        assert c.update_webhook(endpoint.id, enabled=True).enabled
        third = c.submit_mcp_job("back", "code_execution", {"code": "1"})
        got = rec.wait_for(2)
        assert verified(got[1], endpoint.secret)["data"]["job_id"] == third.job_id


def test_tenant_endpoints_filter_events_and_stay_with_their_tenant(
    server: ServerProcess, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    other = server.new_tenant_key("webhooks-other")
    with (
        DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c,
        DeepExecClient(base_url=server.base_url, api_key=other) as o,
    ):
        failures = c.create_webhook(f"{url}/failures", events=["job.failed"])
        assert failures.events == ["job.failed"]
        assert [e.id for e in c.list_webhooks().endpoints] == [failures.id]
        assert c.list_webhooks().endpoints[0].secret is None  # a list shows no keys
        assert o.list_webhooks().endpoints == []
        with pytest.raises(DeepExecError) as missing:
            o.get_webhook(failures.id)
        assert getattr(missing.value, "status_code", None) == 404
        ok = c.execute_code_and_wait("print(1)", max_wait_time=30)
        bad = c.execute_code_and_wait("raise SystemExit(3)", max_wait_time=30)
        o.execute_code_and_wait("raise SystemExit(4)", max_wait_time=30)  # not c's
        (got,) = rec.wait_for(1)
        time.sleep(0.5)
        assert len(rec.got) == 1 and got.path == "/failures"
        payload = verified(got, failures.secret or "")
        assert payload["type"] == "job.failed" and payload["data"]["job_id"] == bad.job_id
        assert c.get_mcp_job_webhooks(ok.job_id).deliveries == []
        with pytest.raises(DeepExecError) as foreign:
            o.get_mcp_job_webhooks(bad.job_id)
        assert getattr(foreign.value, "status_code", None) == 404
        assert c.delete_webhook(failures.id).deleted
        assert c.list_webhooks().endpoints == []


def test_a_rotated_key_signs_beside_the_new_one(
    server: ServerProcess, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        old = c.get_webhook("job-urls").secret
        rotated = c.rotate_webhook_secret("job-urls")
        assert rotated.secret != old and rotated.previous_secret == old
        assert rotated.previous_until is not None
        c.submit_mcp_job("rotated", "code_execution", {"code": "1"}, webhook_url=url)
        (got,) = rec.wait_for(1)
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        assert old and rotated.secret
        verified(got, old)
        verified(got, rotated.secret)


def test_unsafe_urls_are_refused_at_submit(server: ServerProcess) -> None:
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        for url, why in [
            ("ftp://example.com/x", "https:// or http://"),
            ("http://user:pw@example.com/", "user name or password"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://10.1.2.3/", "private"),
            ("http://[::ffff:10.0.0.1]/", "private"),
        ]:
            r = httpx.post(
                f"{server.base_url}/v1/jobs",
                headers={"Authorization": f"Bearer {server.api_key}"},
                json={
                    "name": "x",
                    "job_type": "code_execution",
                    "data": {"code": "1"},
                    "webhook_url": url,
                },
            )
            assert r.status_code == 422, (url, r.text)
            error = r.json()["error"]
            assert error["type"] == "invalid_webhook_url" and why in error["message"], error
            assert error["details"][0]["loc"] == ["body", "webhook_url"]
        with pytest.raises(DeepExecError, match="private"):
            c.create_webhook("http://192.168.1.1/hook")


def test_private_addresses_are_refused_unless_allowed(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    port = url.rsplit(":", 1)[1]
    env = {k: v for k, v in FAST.items() if k != "DEEPEXEC_WEBHOOK_ALLOW_NETWORKS"}
    srv = ServerProcess(tmp_path / "home", env=env).start()
    try:
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as c:
            for literal in (url, f"http://localhost:{port}/"):
                with pytest.raises(DeepExecError, match="loopback"):
                    c.submit_mcp_job("x", "code_execution", {"code": "1"}, webhook_url=literal)
            # A name is resolved at delivery, each of its addresses checked: this machine's
            # own name resolves to a loopback or private address.
            name = socket.gethostname()
            addresses = {i[4][0] for i in socket.getaddrinfo(name, None)}
            job = c.submit_mcp_job(
                "by name", "code_execution", {"code": "1"}, webhook_url=f"http://{name}:{port}/"
            )
            (d,) = deliveries(c, job.job_id, 1, lambda d: d.state == "failed")
            assert len(d.attempts) == 1 and d.attempts[0].status_code is None
            assert "refused" in (d.last_error or "") and name in (d.last_error or "")
            assert any(a in (d.last_error or "") for a in addresses), (d.last_error, addresses)
        assert rec.got == []
    finally:
        srv.stop()


def test_redirects_are_not_followed(server: ServerProcess, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.script = [302]
    rec.headers[302] = {"location": f"{url}/elsewhere"}
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        job = c.submit_mcp_job("moved", "code_execution", {"code": "1"}, webhook_url=f"{url}/a")
        rec.wait_for(2)
        d = c.get_mcp_job_webhooks(job.job_id).deliveries[0]
        assert d.attempts[0].status_code == 302
        assert "not followed" in (d.attempts[0].error or "")
    assert all(g.path == "/a" for g in rec.got)


def test_judge0_callback_url_gets_judge0s_put_signed(
    server: ServerProcess, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    r = httpx.post(
        f"{server.base_url}/submissions",
        headers={"X-Auth-Token": server.api_key},
        json={"source_code": "print('judged')", "language_id": 71, "callback_url": url},
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    (got,) = rec.wait_for(1)
    assert got.method == "PUT"
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        secret = c.get_webhook("job-urls").secret
    body = verified(got, secret or "")
    assert body["token"] == token and body["status"] == {"id": 3, "description": "Accepted"}
    assert base64.b64decode(body["stdout"]) == b"judged\n"  # always base64, as Judge0's
    config = httpx.get(
        f"{server.base_url}/config_info", headers={"X-Auth-Token": server.api_key}
    ).json()
    assert config["enable_callbacks"] is True and config["callbacks_max_tries"] == 5
    bad = httpx.post(
        f"{server.base_url}/submissions",
        headers={"X-Auth-Token": server.api_key},
        json={"source_code": "1", "language_id": 71, "callback_url": "http://10.0.0.1/"},
    )
    assert bad.status_code == 422 and "private" in bad.json()["callback_url"][0]


def test_the_guard_names_what_it_refuses() -> None:
    allowed = guard.networks(["127.0.0.1/32"])
    ip = guard.ipaddress.ip_address
    assert guard.refusal(ip("127.0.0.1"), allowed) is None
    assert "loopback" in (guard.refusal(ip("127.0.0.2"), allowed) or "")
    assert "link-local" in (guard.refusal(ip("169.254.169.254"), []) or "")
    assert "not globally routable" in (guard.refusal(ip("100.64.0.1"), []) or "")
    assert "loopback" in (guard.refusal(ip("::ffff:127.0.0.1"), []) or "")
    assert "loopback" in (guard.refusal(ip("::1"), []) or "")
    assert guard.refusal(ip("93.184.216.34"), []) is None
    with pytest.raises(guard.UnsafeTarget, match="port"):
        guard.check_url("http://example.com:0/", [])
    assert guard.check_url("https://example.com/x?y=1", []).hostname == "example.com"


@pytest.mark.postgres
@pytest.mark.skipif(
    os.environ.get("DEEPEXEC_TEST_SKIP_POSTGRES") == "1", reason="DEEPEXEC_TEST_SKIP_POSTGRES=1"
)
def test_webhooks_on_postgresql(tmp_path: Path, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.script = [500, 200]
    schema = f"dx_hooks_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    db = f"{PG}{'&' if '?' in PG else '?'}options=-csearch_path%3D{schema}"
    srv = ServerProcess(tmp_path / "home", "--database-url", db, env=FAST).start()
    try:
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as c:
            endpoint = c.create_webhook(f"{url}/all")
            job = c.submit_mcp_job("pg", "code_execution", {"code": "1"}, webhook_url=url)
            got = rec.wait_for(3)
            paths = sorted(g.path for g in got)
            assert paths.count("/all") >= 1 and paths.count("/") >= 1
            log = deliveries(c, job.job_id, 2, lambda d: d.state == "delivered")
            assert {d.endpoint_id for d in log} == {None, endpoint.id}
            assert sum(len(d.attempts) for d in log) == 3  # one of them was retried
            key = c.get_webhook("job-urls").secret or ""
            for g in got:
                verified(g, endpoint.secret or "" if g.path == "/all" else key)
            assert json.loads(got[0].body)["data"]["job_id"] == job.job_id
    finally:
        srv.stop()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_the_cli_submits_with_a_webhook_and_shows_its_log(
    server: ServerProcess, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    added = json.loads(server.cli("webhooks", "add", f"{url}/fail", "--event", "job.failed").stdout)
    assert added["url"] == f"{url}/fail" and added["events"] == ["job.failed"]
    assert added["secret"].startswith("whsec_")
    listed = server.cli("webhooks", "list").stdout
    assert added["id"] in listed and "job.failed" in listed
    job_id = server.cli(
        "submit", "--code", "raise SystemExit(1)", "--webhook-url", f"{url}/own"
    ).stdout.strip()
    got = rec.wait_for(2)
    assert sorted(g.path for g in got) == ["/fail", "/own"]
    deadline = time.monotonic() + 10
    while "pending" in (log := server.cli("webhooks", "log", job_id).stdout):
        assert time.monotonic() < deadline, log
        time.sleep(0.1)
    assert log.count("delivered") == 2 and f"{url}/own" in log, log
    key = json.loads(server.cli("webhooks", "show", "job-urls").stdout)
    assert key["id"] == "job-urls" and "url" not in key
    own = next(g for g in got if g.path == "/own")
    assert verified(own, key["secret"])["type"] == "job.failed"
    assert "deleted" in server.cli("webhooks", "delete", added["id"]).stdout
    missing = server.cli("webhooks", "show", added["id"], check=False)
    assert missing.returncode != 0 and "no webhook endpoint" in missing.stderr
