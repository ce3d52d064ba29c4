"""The cache of terminal job statuses that status reads are answered from (web/status_cache.py)."""

from __future__ import annotations

import time

import pytest

from deepexec_server.api.hot_routes import _parse_wait
from deepexec_server.web.status_cache import TerminalCache


def test_an_entry_answers_its_own_tenant_only() -> None:
    cache = TerminalCache()
    cache.put("alice", "j1", b'{"secret": 1}')
    assert cache.get("alice", "j1") == b'{"secret": 1}'
    assert cache.get("bob", "j1") is None
    assert cache.get("alice", "j2") is None


def test_least_recently_read_leave_first_within_the_byte_budget() -> None:
    cache = TerminalCache(max_bytes=30, max_item_bytes=10)
    for i in range(3):
        cache.put("t1", f"j{i}", b"x" * 10)
    assert cache.get("t1", "j0") is not None  # j0 is now the most recently read
    cache.put("t1", "j3", b"y" * 10)
    assert cache.get("t1", "j1") is None
    assert [cache.get("t1", f"j{i}") is not None for i in (0, 2, 3)] == [True, True, True]
    assert cache.size == 30
    cache.put("t1", "big", b"z" * 11)  # over max_item_bytes: not kept
    assert cache.get("t1", "big") is None
    assert cache.size == 30


def test_a_kept_body_is_not_replaced() -> None:
    cache = TerminalCache()
    cache.put("t1", "j1", b"first")
    cache.put("t1", "j1", b"second")
    assert cache.get("t1", "j1") == b"first"
    assert cache.size == len(b"first")


def test_a_purged_job_is_forgotten_and_old_entries_are_read_again() -> None:
    cache = TerminalCache()
    cache.put("t1", "j1", b"with result")
    cache.put("t1", "j2", b"other")
    cache.discard(["j1", "unknown"])
    assert cache.get("t1", "j1") is None
    assert cache.get("t1", "j2") == b"other"
    assert cache.size == len(b"other")
    # Past max_age an entry is read from the store again (a purge by another process).
    stale = TerminalCache(max_age=0.0)
    stale.put("t1", "j1", b"old")
    time.sleep(0.001)
    assert stale.get("t1", "j1") is None
    assert stale.size == 0


@pytest.mark.parametrize(
    ("query", "wait"),
    [
        (b"", 0.0),
        (b"wait=0", 0.0),
        (b"wait=2.5", 2.5),
        (b"wait=60", 60.0),
        (b"wait=60.0", 60.0),
        # Anything else goes to the framework's route, which answers 422 or ignores it.
        (b"wait=61", None),
        (b"wait=-1", None),
        (b"wait=1e3", None),
        (b"wait=nan", None),
        (b"wait=", None),
        (b"wait=1&wait=2", None),
        (b"other=1", None),
    ],
)
def test_wait_is_taken_only_when_plainly_valid(query: bytes, wait: float | None) -> None:
    assert _parse_wait(query) == wait
