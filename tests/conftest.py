from __future__ import annotations

import os
import pwd
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from deepexec_sdk import DeepExecClient
from deepexec_server.store.postgres import PostgresStore
from tests.serverproc import ServerProcess

PG_URL = os.environ.get("DEEPEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: ``openai_server``: llama.cpp's OpenAI-compatible HTTP server, for the upstream tests.
pytest_plugins = ["tests.llama_server"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server on its defaults (SQLite, sandbox, embedded model) for the session."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("home"), "--concurrency", "code_execution=4,text_generation=2"
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[DeepExecClient]:
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as c:
        yield c


def sandbox_uid() -> int | None:
    for name in ("deepexec-sandbox", "nobody"):
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
    return None


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def sandbox_uid_processes() -> list[int]:
    """Processes (zombies included) of the sandbox uid descending from this test process.

    Only descendants: other test runs on the host may have sandboxes of their own. Escaped
    daemons are descendants too, since the executor makes this process a child subreaper.
    """
    uid = pwd.getpwnam("deepexec-sandbox").pw_uid
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        pid = int(entry.name)
        ancestor, hops = _ppid(pid), 0
        while ancestor > 1 and ancestor != me and hops < 64:
            ancestor, hops = _ppid(ancestor), hops + 1
        if ancestor == me:
            out.append(pid)
    return out


def processes_of_job(job_id: str) -> list[str]:
    """Command lines of the live (non-zombie) processes of one job: those in its cgroup, whose
    path names the job, or whose command line does (bwrap's work-dir argument). Other jobs
    running on the host at the same time do not count."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if (job_id in cgroups or job_id in cmd) and "pytest" not in cmd:
            out.append(cmd)
    return out


def wait_for_no_processes_of_job(job_id: str, timeout: float = 1.0) -> list[str]:
    """Wait until the job has no live process; return any that outlived ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := processes_of_job(job_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_until_no_processes(marker: str, timeout: float = 3.0) -> list[str]:
    """Wait until no live process's command line contains ``marker``; return survivors."""
    deadline = time.monotonic() + timeout
    while True:
        survivors = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd and "pytest" not in cmd:
                survivors.append(cmd)
        if not survivors or time.monotonic() > deadline:
            return survivors
        time.sleep(0.05)


def run_script(
    server: ServerProcess, code: str, timeout: float = 120.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a Python program as a user's script in another shell of the server's user."""
    return subprocess.run(
        [str(Path(__import__("sys").executable)), "-c", code],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or server.home,
    )


@pytest.fixture
async def pg_store() -> AsyncIterator[PostgresStore]:
    """An open PostgreSQL store in a schema of its own (so its LISTEN/NOTIFY channel is its
    own too), dropped afterwards."""
    import psycopg

    schema = f"deepexec_test_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(PG_URL, schema=schema, max_size=4)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of the test database whose search_path is a fresh schema of its own (what a
    server, its workers and ``deepexec keys`` are pointed at), dropped afterwards."""
    import psycopg

    schema = f"dx_server_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
