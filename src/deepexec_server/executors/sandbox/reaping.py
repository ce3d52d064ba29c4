"""Stopping a run completely and reaping what it leaves (see docs/sandbox.md, "Stopping a run").

Killing: SIGKILL to the sandbox's pid 1 makes the kernel kill the whole pid namespace, so
daemons that ``setsid`` and double-fork die too; then SIGKILL to the launcher's process group
as a backstop; then whatever is left in the job's cgroup. Killing only the outer bwrap works
too but leaves a zombie init for the lazy host pid 1 to reap (≈1.3 s here): the server is a
child subreaper and reaps that init itself, by the pid bwrap reports on its status pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .cgroups import pid_alive

#: How long to wait for the orphaned sandbox init to become reapable.
REAP_WINDOW_S = 0.5
PR_SET_CHILD_SUBREAPER = 36
#: After SIGKILL to the sandbox init, how long before the launcher's group is killed too.
KILL_GRACE_S = 0.5


def open_pipe() -> tuple[int, int]:
    """A (read, write) pipe; only the write end is passed to the launched process."""
    read_fd, write_fd = os.pipe()
    return read_fd, write_fd


def sandbox_init_pids(launcher_pid: int) -> list[int]:
    """Children of the outer bwrap: the sandbox's pid 1 (as seen from the host)."""
    try:
        text = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def kill(pid: int, how: Callable[[int, int], None] = os.kill) -> None:
    """SIGKILL ``pid`` (or, with ``os.killpg``, its group) if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        how(pid, signal.SIGKILL)


async def kill_run(
    proc: asyncio.subprocess.Process,
    sandboxed: bool,
    kill_rest: Callable[[], None] | None = None,
) -> None:
    """The ordered kill: sandbox init (whole pid namespace), then the launcher's group, then
    whatever is left in the job's cgroup."""
    if proc.returncode is not None:
        if kill_rest is not None:
            await asyncio.to_thread(kill_rest)
        return
    if sandboxed:
        for pid in sandbox_init_pids(proc.pid):
            kill(pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_GRACE_S)
    # start_new_session made the launcher a group leader: its pgid is its pid.
    kill(proc.pid, os.killpg)
    kill(proc.pid)
    if kill_rest is not None:
        # Off the loop: it may retry for a few ms while processes are still forking.
        await asyncio.to_thread(kill_rest)


def read_available(fd: int) -> bytes:
    """Whatever a finished bwrap wrote to its status pipe (a few hundred bytes, buffered)."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_child_pid(status: bytes) -> int | None:
    """The ``child-pid`` from bwrap's ``--json-status-fd`` output (one JSON object a line)."""
    for line in status.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("child-pid"), int):
            return int(obj["child-pid"])
    return None


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (PR_SET_CHILD_SUBREAPER).

    The outer bwrap exits as soon as its init reports the exit status, before reaping that
    init; the orphaned init then waits as a zombie for the host's pid 1, which on some hosts
    reaps lazily (≈1.5 s). As a subreaper the server adopts it and reaps it by pid.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


async def reap_sandbox_init(pid: int, within: float = REAP_WINDOW_S) -> bool:
    """Reap the sandbox init ``pid`` once it is our (adopted) zombie; False if it never
    became our child in time (not a subreaper, or it is still exiting)."""
    deadline = time.monotonic() + within
    pause = 0.0005
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
        except ChildProcessError:
            done = 0
            # Not (yet) adopted: only possible while the outer bwrap is still exiting. When
            # the run was killed, the outer bwrap often reaps it itself: then it is gone.
            if not pid_alive(pid):
                return True
        if done == pid:
            return True
        if time.monotonic() >= deadline:
            return False
        # Usually ready within a millisecond or two: poll finely first, then back off.
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.008)


def reap_sandbox_init_blocking(pid: int, within: float = REAP_WINDOW_S) -> bool:
    """``reap_sandbox_init`` for threads (the start-up probe)."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
