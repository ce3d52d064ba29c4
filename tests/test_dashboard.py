"""The dashboard at ``/ui``, in a real browser: Playwright drives Debian's headless chromium
against the real server. Each test saves a screenshot under ``.test-output/ui/``.

Sign-in, live jobs list and job page, live output, cancel, the submit form, tenant isolation,
cross-site requests, sign-out.
"""

from __future__ import annotations

import http.server
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deepexec_sdk import DeepExecClient
from tests.conftest import wait_until_no_processes
from tests.serverproc import ServerProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / ".test-output" / "ui"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/setup.sh installs it)"
)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
# Assertions retry up to this long (jobs run for seconds; the machine may be busy).
expect.set_options(timeout=30_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as pw:
        # --no-sandbox: chromium refuses to run as root otherwise (the tests run as root).
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: sync_api.Browser, request: pytest.FixtureRequest) -> Iterator[sync_api.Page]:
    context = browser.new_context()
    context.set_default_timeout(20_000)
    pg = context.new_page()
    yield pg
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def sign_in(page: sync_api.Page, server: ServerProcess, key: str) -> None:
    page.goto(f"{server.base_url}/ui/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.base_url}/ui/jobs")


def status_of(client: DeepExecClient, job_id: str) -> str:
    return str(client.get_mcp_job_status(job_id).status)


def test_a_job_submitted_through_the_sdk_appears_and_completes_without_reload(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    sign_in(page, server, server.api_key)
    name = f"ui-{secrets.token_hex(4)}"
    job = client.submit_mcp_job(
        name=name,
        job_type="code_execution",
        # Long enough for a list refresh (every 2 s) to see it RUNNING, even on a busy machine.
        data={"code": "import time; time.sleep(6); print('done')"},
    )
    row = page.locator(f"tr[data-job='{job.job_id}']")
    expect(row).to_be_visible()
    expect(row.locator(".status")).to_have_text("RUNNING")
    expect(row.locator(".status")).to_have_text("COMPLETED")
    expect(row).to_contain_text(name)


def test_a_running_jobs_output_appears_as_it_is_printed(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    sign_in(page, server, server.api_key)
    code = (
        "import time\n"
        "for i in range(1, 4):\n"
        "    print(f'line {i}', flush=True)\n"
        "    time.sleep(3)\n"
    )
    job = client.submit_mcp_job(name="ui-live", job_type="code_execution", data={"code": code})
    page.goto(f"{server.base_url}/ui/jobs/{job.job_id}")
    live = page.locator("#live-output")
    expect(live).to_contain_text("line 2")
    # Seen while the program still runs: line 3 is not printed yet.
    assert "line 3" not in live.inner_text()
    assert status_of(client, job.job_id) == "RUNNING"
    expect(page.locator("#final-output")).to_have_text("line 1\nline 2\nline 3\n")
    expect(page.locator("#job-status")).to_have_text("COMPLETED")


def test_the_cancel_button_stops_a_running_job_and_its_processes(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    sign_in(page, server, server.api_key)
    marker = f"{600 + secrets.randbelow(1000)}.{secrets.randbelow(10**6):06d}"
    code = (
        "import subprocess, time\n"
        f"subprocess.Popen(['sleep', '{marker}'])\n"
        "for _ in range(120):\n"
        "    print('started', flush=True)\n"
        "    time.sleep(0.5)\n"
    )
    job = client.submit_mcp_job(name="ui-cancel", job_type="code_execution", data={"code": code})
    page.goto(f"{server.base_url}/ui/jobs/{job.job_id}")
    expect(page.locator("#live-output")).to_contain_text("started")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-status")).to_have_text("CANCELED")
    assert status_of(client, job.job_id) == "CANCELED"
    assert wait_until_no_processes(marker) == []


def test_the_submit_form_runs_code_and_shows_its_output(
    page: sync_api.Page, server: ServerProcess
) -> None:
    sign_in(page, server, server.api_key)
    page.get_by_role("link", name="Submit").click()
    page.get_by_label("Code", exact=True).fill("print(6 * 7)")
    page.get_by_role("button", name="Run").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/job_\w+$"))
    expect(page.locator("#final-output")).to_have_text("42\n")
    expect(page.locator("#job-status")).to_have_text("COMPLETED")


def test_another_tenant_sees_neither_the_job_nor_its_page(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    job = client.submit_mcp_job(name="ui-private", job_type="code_execution", data={"code": "1"})
    other = server.new_tenant_key(f"ui-other-{secrets.token_hex(3)}")
    sign_in(page, server, other)
    expect(page.locator("#job-rows")).not_to_contain_text(job.job_id)
    response = page.goto(f"{server.base_url}/ui/jobs/{job.job_id}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()


class _EvilSite(http.server.BaseHTTPRequestHandler):
    """Another origin: a page whose form posts to the dashboard's cancel URL at once."""

    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form id="f" method="post" action="{self.target}">'
            '<input name="csrf" value="guess"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_cross_site_form_post_is_refused(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    sign_in(page, server, server.api_key)
    job = client.submit_mcp_job(
        name="ui-csrf", job_type="code_execution", data={"code": "import time; time.sleep(20)"}
    )
    _EvilSite.target = f"{server.base_url}/ui/jobs/{job.job_id}/cancel"
    evil = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _EvilSite)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(f"http://127.0.0.2:{evil.server_address[1]}/")
        page.wait_for_load_state("networkidle")
        # The same browser, signed in, posting with its cookie but from the dashboard's own
        # origin and without the session's token: refused too.
        forged = page.request.post(
            _EvilSite.target,
            form={"csrf": "guess"},
            headers={"Origin": server.base_url},
            max_redirects=0,
        )
        assert forged.status == 403
        assert status_of(client, job.job_id) == "RUNNING"
    finally:
        evil.shutdown()
        evil.server_close()
        client.cancel_mcp_job(job.job_id)


def test_signing_out_ends_the_session(page: sync_api.Page, server: ServerProcess) -> None:
    sign_in(page, server, server.api_key)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.base_url}/ui/login")
    page.goto(f"{server.base_url}/ui/jobs")
    expect(page).to_have_url(f"{server.base_url}/ui/login")
    # And a wrong key does not sign in.
    page.get_by_label("API key").fill("dx-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")


def test_the_session_cookie_is_http_only_and_strict(server: ServerProcess) -> None:
    res = httpx.post(
        f"{server.base_url}/ui/login", data={"api_key": server.api_key}, follow_redirects=False
    )
    assert res.status_code == 303
    cookie = res.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    assert server.api_key.lower() not in cookie
    started = time.monotonic()
    assert httpx.get(f"{server.base_url}/ui/jobs", follow_redirects=False).status_code == 303
    assert time.monotonic() - started < 10


def test_the_languages_and_models_page_shows_what_the_server_runs(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    sign_in(page, server, server.api_key)
    page.get_by_role("link", name="Languages and models").click()
    languages = [lang.name for lang in client.list_languages().languages]
    table = page.locator("table").first
    for name in languages:
        expect(table).to_contain_text(name)
    models = page.locator("table").nth(1)
    expect(models).to_contain_text("smollm2-135m-instruct")
    expect(models).to_contain_text("(default)")


def test_run_again_and_download_the_output(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    sign_in(page, server, server.api_key)
    job = client.execute_code_and_wait("print('again and again')")
    page.goto(f"{server.base_url}/ui/jobs/{job.job_id}")
    with page.expect_download() as fetched:
        page.get_by_role("link", name="Download output").click()
    saved = Path(fetched.value.path())
    assert saved.read_text() == "again and again\n"
    page.get_by_role("button", name="Run again").click()
    expect(page).not_to_have_url(f"{server.base_url}/ui/jobs/{job.job_id}")
    expect(page.locator("#final-output")).to_have_text("again and again\n")
    rerun_id = page.url.rsplit("/", 1)[1]
    assert rerun_id != job.job_id
    assert client.get_mcp_job_status(rerun_id).result["stdout"] == "again and again\n"


def tenant_client(server: ServerProcess) -> tuple[str, DeepExecClient]:
    """A fresh tenant's key and SDK client: its job list holds only what the test makes."""
    key = server.new_tenant_key(f"ui-{secrets.token_hex(4)}")
    return key, DeepExecClient(base_url=server.base_url, api_key=key)


def test_search_by_id_opens_the_job_and_an_unknown_id_is_a_404_page(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    job = client.submit_mcp_job(name="ui-find", job_type="code_execution", data={"code": "1"})
    sign_in(page, server, server.api_key)
    page.get_by_label("Job id").fill(job.job_id)
    page.get_by_role("button", name="Open").click()
    expect(page).to_have_url(f"{server.base_url}/ui/jobs/{job.job_id}")
    expect(page.get_by_role("heading", name=job.job_id)).to_be_visible()
    page.goto(f"{server.base_url}/ui/jobs")
    page.get_by_label("Job id").fill("job_nosuchjob")
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()


def test_bulk_cancel_stops_the_ticked_jobs_and_keeps_the_others(
    page: sync_api.Page, server: ServerProcess
) -> None:
    key, tenant = tenant_client(server)
    with tenant:
        sleeper = {"code": "import time; print('up', flush=True); time.sleep(120)"}
        jobs = [
            tenant.submit_mcp_job(name=f"ui-bulk-{i}", job_type="code_execution", data=sleeper)
            for i in range(3)
        ]
        sign_in(page, server, key)
        for job in jobs[:2]:
            page.locator(f"#pick-{job.job_id}").check()
        # The ticks survive the list's own refresh (every 2 s).
        with page.expect_response(lambda r: "/ui/jobs/rows" in r.url):
            pass
        with page.expect_response(lambda r: "/ui/jobs/rows" in r.url):
            pass
        for job in jobs[:2]:
            expect(page.locator(f"#pick-{job.job_id}")).to_be_checked()
        expect(page.locator(f"#pick-{jobs[2].job_id}")).not_to_be_checked()
        page.get_by_role("button", name="Cancel selected").click()
        expect(page.get_by_role("status")).to_have_text("2 jobs cancelled.")
        assert [status_of(tenant, j.job_id) for j in jobs[:2]] == ["CANCELED", "CANCELED"]
        assert status_of(tenant, jobs[2].job_id) in ("PENDING", "RUNNING")
        # A finished job has no box to tick.
        tenant.cancel_mcp_job(jobs[2].job_id)
        expect(page.locator(f"#pick-{jobs[2].job_id}")).to_have_count(0)


def test_the_request_code_is_highlighted(
    page: sync_api.Page, server: ServerProcess, client: DeepExecClient
) -> None:
    job = client.submit_mcp_job(
        name="ui-code", job_type="code_execution", data={"code": "def f(x):\n    return x\n"}
    )
    sign_in(page, server, server.api_key)
    page.goto(f"{server.base_url}/ui/jobs/{job.job_id}")
    page.get_by_text("Request").click()
    code = page.locator("#job-code")
    expect(code).to_have_class(re.compile(r"\bhljs\b"))
    expect(code.locator(".hljs-keyword").first).to_have_text("def")
    expect(code).to_have_text("def f(x):\n    return x\n")


def test_live_output_stays_bounded_in_the_page(page: sync_api.Page, server: ServerProcess) -> None:
    """A program that prints 600 KB while the page watches keeps the page's live output at
    256 KiB at most, and the page says that earlier output is not shown."""
    key, tenant = tenant_client(server)
    code = (
        "import sys, time\n"
        "print('ready', flush=True)\n"
        "time.sleep(3)\n"
        "for i in range(12_000):\n"
        "    sys.stdout.write(f'{i:08d} ' + 'x' * 40 + '\\n')\n"
        "    if i % 100 == 0:\n"
        "        sys.stdout.flush()\n"
        "        time.sleep(0.02)\n"
        "print('all printed', flush=True)\n"
        "time.sleep(120)\n"
    )
    with tenant:
        sign_in(page, server, key)
        job = tenant.submit_mcp_job(name="ui-flood", job_type="code_execution", data={"code": code})
        page.goto(f"{server.base_url}/ui/jobs/{job.job_id}")
        live = page.locator("#live-output")
        expect(live).to_contain_text("ready")
        expect(live).to_contain_text("all printed", timeout=60_000)
        size = page.evaluate(
            "() => { const p = document.getElementById('live-output');"
            " return [p.textContent.length, p.childNodes.length]; }"
        )
        assert size[0] <= 256 * 1024 and size[1] <= 2000, size
        expect(page.locator("#output-trimmed")).to_be_visible()
        assert "00000000 " not in live.inner_text()  # the start was dropped from the view
        tenant.cancel_mcp_job(job.job_id)
