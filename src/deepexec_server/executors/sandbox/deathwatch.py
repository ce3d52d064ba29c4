"""The death watch: if the server dies while a sandbox is starting, that sandbox dies too.

``--die-with-parent`` is not enough: nothing ties the launcher to the server until the outer
bwrap's ``PR_SET_PDEATHSIG``, and the bwrap child (the future sandbox init) only sets its own
after all its mounts, without checking that its parent is still there. A server killed in
those first milliseconds would leave that child blocked forever, or running the program as an
orphaned sandbox. So every launch carries ``OWNER_ENV`` in its environment (the launcher,
setpriv, both bwraps and the sandbox init keep it; the program does not: ``--clearenv``), and
one death watch per server process blocks on a pipe only the server holds; at EOF, however
the server ended, it SIGKILLs every process that still carries the mark. Killing the init
takes its whole pid namespace along. See docs/sandbox.md, "Stopping a run".
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading

log = logging.getLogger("deepexec_server.sandbox")

#: Launch-environment variable marking the processes of this server's sandbox runs (see
#: ``death_watch_env``). The program never sees it: bwrap starts it with ``--clearenv``.
OWNER_ENV = "DEEPEXEC_SANDBOX_OWNER"
#: Once the server is gone, for how long at most the death watch keeps killing marked processes.
DEATH_WATCH_WINDOW_S = 10.0
#: ... and it stops early once no process has shown the mark for this long.
DEATH_WATCH_QUIET_S = 0.25
#: The death watch (run by ``python -I -S -c``; argv: the ``NAME=value`` mark, the window,
#: the quiet time). Blocks reading stdin, a pipe whose write end only the server holds, until
#: EOF: the server has exited, however it ended. Then SIGKILLs every process whose environment
#: holds the mark (zombies have none), scan after scan until none has shown it for the quiet
#: time: a process in the middle of an ``execve`` (sh to setpriv to bwrap) reads as having no
#: environment for a moment, and a bwrap still starting may clone its child between scans.
DEATH_WATCH_CODE = r"""
import os, sys, time
os.closerange(3, 65536)
me, mark = os.getpid(), b"\0" + sys.argv[1].encode() + b"\0"
try:
    while os.read(0, 4096):
        pass
except OSError:
    pass
now = time.monotonic()
deadline, quiet_until = now + float(sys.argv[2]), now + float(sys.argv[3])
while now < deadline:
    killed = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/" + name + "/environ", "rb") as f:
                if mark not in b"\0" + f.read():
                    continue
            os.kill(int(name), 9)
            killed += 1
        except OSError:
            continue
    now = time.monotonic()
    if killed:
        quiet_until = now + float(sys.argv[3])
    elif now >= quiet_until:
        break
    time.sleep(0.005)
    now = time.monotonic()
"""


class _DeathWatch:
    """This process's death watch (see ``DEATH_WATCH_CODE``): started on first use, started
    again if it died; a forked child of the server starts its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = 0
        self._pid: int | None = None
        self._write_fd: int | None = None
        self._env: dict[str, str] = {}
        self._warned = False

    def env(self) -> dict[str, str]:
        """``{OWNER_ENV: mark}`` for a launch environment; {} if no watch could be started."""
        with self._lock:
            if not self._alive():
                self._start()
            return self._env

    def _alive(self) -> bool:
        if self._pid is None or self._owner != os.getpid():
            return False
        try:
            done, _ = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            done = self._pid
        return done == 0

    def _start(self) -> None:
        if self._write_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
        self._pid, self._write_fd, self._env = None, None, {}
        self._owner = os.getpid()
        mark = secrets.token_hex(8)
        argv = [
            sys.executable, "-I", "-S", "-c", DEATH_WATCH_CODE, f"{OWNER_ENV}={mark}",
            str(DEATH_WATCH_WINDOW_S), str(DEATH_WATCH_QUIET_S),
        ]  # fmt: skip
        # Both ends are close-on-exec: no launcher inherits the write end, so it is closed
        # exactly when this process ends.
        read_fd, write_fd = os.pipe()
        try:
            pid = os.posix_spawn(
                sys.executable,
                argv,
                {},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_fd, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                ],
                setsid=True,
            )
        except (OSError, ValueError) as exc:
            os.close(write_fd)
            if not self._warned:
                self._warned = True
                log.warning(
                    "could not start the death watch (%s): if the server is killed while a "
                    "sandbox is starting, that sandbox may outlive it",
                    exc,
                )
            return
        finally:
            os.close(read_fd)
        self._pid, self._write_fd, self._env = pid, write_fd, {OWNER_ENV: mark}


_DEATH_WATCH = _DeathWatch()


def death_watch_env() -> dict[str, str]:
    """The mark that has this server's death watch kill a sandbox's processes if the server
    dies first (``{}`` if no watch could be started). Starts the watch on first use."""
    return _DEATH_WATCH.env()
