"""The SQLite database's disk fills up (a small tmpfs as the server's data dir): submits get a
clear 507 ``insufficient_storage`` (not a 500), reads go on, the database stays intact, and
the server takes submits again as soon as space returns, without a restart."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.serverproc import ServerProcess

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


def fill(path: Path) -> None:
    """Write ``path`` until its file system has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 1 << 20
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2
    finally:
        os.close(fd)


def test_a_full_disk_is_a_507_and_the_server_recovers_when_space_returns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(data)], check=True)
    srv = ServerProcess(tmp_path / "home", env={"DEEPEXEC_DATA_DIR": str(data)})
    try:
        srv.start()
        auth = {"Authorization": f"Bearer {srv.api_key}"}
        with httpx.Client(timeout=30, headers=auth) as http:

            def submit(name: str, code: str) -> httpx.Response:
                body = {"name": name, "job_type": "code_execution", "data": {"code": code}}
                return http.post(f"{srv.base_url}/v1/jobs", json=body)

            before = submit("before", "print(1)").json()["job_id"]
            done = http.get(f"{srv.base_url}/v1/jobs/{before}?wait=20").json()
            assert done["status"] == "COMPLETED", done

            filler = data / "filler"
            fill(filler)
            accepted: list[str] = []
            for i in range(50):  # the last free pages of the database's file may take a few
                r = submit(f"fill-{i}", "#" + "x" * 50_000)
                if r.status_code != 201:
                    break
                accepted.append(r.json()["job_id"])
            assert r.status_code == 507, r.text
            error = r.json()["error"]
            assert error["type"] == "insufficient_storage", error
            assert "disk is full" in error["message"]
            # Reads go on.
            assert http.get(f"{srv.base_url}/v1/jobs/{before}").json()["status"] == "COMPLETED"
            assert http.get(f"{srv.base_url}/healthz").status_code == 200

            filler.unlink()  # space returns: no restart
            deadline = time.monotonic() + 30
            while (after := submit("after", "print(2)")).status_code != 201:
                assert after.status_code == 507 and time.monotonic() < deadline, after.text
                time.sleep(0.2)
            done = http.get(f"{srv.base_url}/v1/jobs/{after.json()['job_id']}?wait=30").json()
            assert done["status"] == "COMPLETED" and done["result"]["stdout"] == "2\n", done
            for job_id in accepted:  # what was accepted as the disk filled is all there
                assert http.get(f"{srv.base_url}/v1/jobs/{job_id}").status_code == 200
        srv.stop()
        with sqlite3.connect(data / "deepexec.db") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            stored = conn.execute("SELECT count(*) FROM jobs WHERE name LIKE 'fill-%'").fetchone()
        assert stored == (len(accepted),)  # nothing half-written, nothing accepted lost
    finally:
        srv.stop()
        subprocess.run(["umount", "-l", str(data)], check=False)
