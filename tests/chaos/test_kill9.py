"""The server killed with SIGKILL at random moments under a mixed load (code jobs, text jobs,
cancels, three tenants), ten times in a row, restarted each time on its SQLite database: no
accepted job is lost, none is stuck, none is duplicated, every result is intact."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tests.chaos.load import TENANTS, Ledger
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(300)

KILLS = 10


def test_ten_kill9s_under_load_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path / "home", env={"DEEPEXEC_CONCURRENCY": "code_execution=2,text_generation=1"}
    )
    srv.start()
    try:
        ledger = Ledger(srv.base_url, {t: srv.new_tenant_key(t) for t in TENANTS})
        rng = random.Random(20261208)
        for kill in range(KILLS):
            stop = threading.Event()
            loaders = [
                threading.Thread(target=ledger.run, args=(stop, kill * 10 + i)) for i in range(2)
            ]
            for t in loaders:
                t.start()
            time.sleep(rng.uniform(0.3, 1.5))  # a random moment: mid-submit, mid-job, mid-cancel
            srv.kill9()
            stop.set()
            for t in loaders:
                t.join(30)
            srv.start()
        counts = ledger.check()
    finally:
        srv.stop()
    # The load did what it is for: jobs finished, and some were caught by a kill.
    assert len(ledger.submits) >= 10 * KILLS, len(ledger.submits)
    assert counts.get("COMPLETED", 0) >= len(ledger.submits) // 4, counts
