"""PostgreSQL restarted under a mixed load, on a throwaway cluster this test makes (initdb on
a free port; the shared one is never touched): submits during the outage are refused with a
retryable 503 (never a 500) or wait it out, the server reconnects by itself, and no accepted
job is lost, stuck or duplicated."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.load import TENANTS, Ledger
from tests.serverproc import ServerProcess, free_port

pytestmark = pytest.mark.timeout(300)

BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), "")


def as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool as the ``postgres`` user (initdb refuses root)."""
    run_as = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    return subprocess.run([*run_as, *argv], capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture
def cluster() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL cluster of our own: its URL and its data directory."""
    if not BIN or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL's server binaries are not installed")
    # Its own directory under /tmp: pytest's are root's alone, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="deepexec-chaos-pg-"))
    os.chmod(root, 0o755)
    shutil.chown(root, "postgres")
    data = root / "data"
    port = free_port()
    try:
        as_postgres(f"{BIN}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(root / "log")
        as_postgres(f"{BIN}/pg_ctl", "-D", str(data), "-o", opts, "-l", log, "-w", "start")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", data
    finally:
        if data.exists():
            stop = [f"{BIN}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"]
            with contextlib.suppress(subprocess.CalledProcessError):
                as_postgres(*stop)
        for _ in range(20):  # its last processes may still be exiting
            shutil.rmtree(root, ignore_errors=True)
            if not root.exists():
                break
            time.sleep(0.25)


def test_a_postgresql_restart_mid_load_loses_nothing(
    tmp_path: Path, cluster: tuple[str, Path]
) -> None:
    url, data = cluster
    srv = ServerProcess(
        tmp_path / "home",
        env={
            "DEEPEXEC_DATABASE_URL": url,
            "DEEPEXEC_CONCURRENCY": "code_execution=2,text_generation=1",
        },
    )
    srv.start()
    try:
        ledger = Ledger(srv.base_url, {t: srv.new_tenant_key(t) for t in TENANTS})
        stop = threading.Event()
        loaders = [threading.Thread(target=ledger.run, args=(stop, i)) for i in range(2)]
        for t in loaders:
            t.start()
        time.sleep(1.5)
        before = len(ledger.submits)
        log = str(data.parent / "log")  # else the server writes to our pipe, held open
        as_postgres(f"{BIN}/pg_ctl", "-D", str(data), "-l", log, "-m", "fast", "-w", "restart")
        time.sleep(3.0)  # the server reconnects by itself, under load
        stop.set()
        for t in loaders:
            t.join(60)
        assert srv.proc is not None and srv.proc.poll() is None, srv.log()
        counts = ledger.check()
    finally:
        srv.stop()
    assert before >= 10 and len(ledger.submits) > before, (before, len(ledger.submits))
    assert set(ledger.refused) <= {503}, ledger.refused  # the outage: retryable, never a 500
    assert counts.get("COMPLETED", 0) >= len(ledger.submits) // 2, counts
    assert "Traceback" not in srv.log() or "StoreUnavailable" in srv.log()
