"""Running one untrusted program in a bubblewrap sandbox, and stopping it completely.

Process model (see notes/sandbox.md §5)::

    server (root)
     └─ launcher: /bin/sh running LAUNCHER (gate, rlimits), own session
          ─exec─▶ setpriv (drop to the sandbox uid, no groups)
          ─exec─▶ bwrap, host uid = the sandbox user
               └─ bwrap init: pid 1 of a new pid namespace (--die-with-parent)
                    └─ python3 / node / bash main.* (no capabilities, empty netns, only the
                       read-only system trees of the host: /usr, /etc; no /sys)

The uid drop happens before bwrap runs: bwrap started as root keeps host uid 0 and can read
``/etc/shadow`` even with ``--uid``. util-linux ``setpriv`` does it, so the server spawns with
``vfork`` (CPython falls back to a full ``fork`` of the server whenever ``Popen`` is given
``user=``/``group=``: ≈3 ms of the loop's time per run, more with a model loaded). Without
``setpriv`` the drop falls back to ``Popen(user=..., group=..., extra_groups=[])``. No
``preexec_fn`` (unsafe in a threaded server): the launcher sets the rlimits with ``ulimit``,
the session comes from ``start_new_session``.

Killing: SIGKILL to the sandbox's pid 1 makes the kernel kill the whole pid namespace, so
daemons that ``setsid`` and double-fork die too; then SIGKILL to the launcher's process group
as a backstop. Killing only the outer bwrap works too but leaves a zombie init for the lazy
host pid 1 to reap (≈1.3 s here).

If the server itself dies (SIGKILL, OOM kill, crash), ``--die-with-parent`` is not enough:
nothing ties the launcher to the server until the outer bwrap's ``PR_SET_PDEATHSIG``, and the
bwrap child (the future sandbox init) only sets its own after all its mounts, without
checking that its parent is still there (bubblewrap issue #633). A server killed in those
first milliseconds leaves that child blocked forever on bwrap's internal eventfd, or running
the program as an orphaned sandbox. So every launch also carries ``OWNER_ENV`` in its
environment (the launcher, setpriv, both bwraps and the sandbox init keep it; the program
does not: ``--clearenv``), and one death watch per server process (``death_watch_env``)
blocks on a pipe only the server holds; at EOF, however the server ended, it SIGKILLs every
process that still carries the mark. Killing the init takes its whole pid namespace along.

The pure parts (argument lists, masked dirs, exit decoding, output capture) are separate from
the thin ``run_program`` that acts.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import os
import pwd
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ._progress_helper import PROGRESS_FD_ENV, ProgressLineBuffer, ProgressUpdate

log = logging.getLogger("deepexec_server.sandbox")

#: PATH inside the sandbox.
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Where the job's work dir appears inside the sandbox (also its HOME and cwd).
SANDBOX_HOME = "/home/sandbox"
#: The host trees a sandbox sees, read-only: the system and its toolchains (every interpreter
#: and compiler is found under /usr/bin, see languages.SYSTEM_BIN_DIRS, and resolves into /usr
#: or, through /etc/alternatives, /etc). Nothing else of the host: not /sys (the cgroup
#: hierarchy with every other job's name and figures, the host's devices), not /var, /opt,
#: /root, /srv or wherever the server and its source live. Missing ones are skipped; on a
#: merged-/usr host /bin, /sbin and /lib* are symlinks and stay symlinks.
SYSTEM_TREES: tuple[str, ...] = (
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
)  # fmt: skip
#: Empty, writable, size-capped tmpfs dirs every sandbox gets (/home holds the work dir).
SCRATCH_DIRS: tuple[str, ...] = ("/tmp", "/var/tmp", "/home")  # noqa: S108
#: Size of each scratch tmpfs: the sandbox's private /tmp is one of them.
TMPFS_SIZE = 64 * 1024 * 1024
#: Environment variable names a job may not set (they steer the loader or the sandbox).
RESERVED_ENV_NAMES = frozenset({"PATH", "HOME"})
RESERVED_ENV_PREFIXES: tuple[str, ...] = ("LD_", "DEEPEXEC_")
#: Read size for the output pipes. The StreamReader buffer bounds what sits in memory.
READ_CHUNK = 64 * 1024
#: After the program ends or is killed, how long to wait for its pipes to reach EOF.
DRAIN_GRACE_S = 1.0
#: How long to wait for the orphaned sandbox init to become reapable.
REAP_WINDOW_S = 0.5
PR_SET_CHILD_SUBREAPER = 36
#: After SIGKILL to the sandbox init, how long before the launcher's group is killed too.
KILL_GRACE_S = 0.5
#: How often ``RunRequest.watch`` (the cgroup CPU-time check) is polled.
WATCH_INTERVAL_S = 0.1
#: The launcher, a fixed script: job input only ever reaches it as arguments after its own.
#: ``$1 = gate``: hold until the server has put the launcher into the job's cgroup, by reading
#: one line from stdin (a pipe: byte by byte, so nothing of the job's stdin is consumed); exit
#: 111 if the server hung up instead. Then set the rlimits ($2 soft and $3 hard CPU seconds, $4
#: file size in 512-byte blocks, $5 open files, no core files; exit 112 if one cannot be set)
#: and exec the rest.
LAUNCHER = (
    'if [ "$1" = gate ]; then read -r _ || exit 111; fi; '
    'ulimit -S -t "$2" && ulimit -H -t "$3" && ulimit -f "$4" && ulimit -n "$5" && ulimit -c 0 '
    '|| exit 112; shift 5; exec "$@"'
)
LAUNCHER_SHELL = "/bin/sh"
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


# --- identity ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged host identity sandboxed programs run as (only when the server is root)."""

    name: str
    uid: int
    gid: int


def resolve_run_as(user_name: str, server_uid: int | None = None) -> RunAs | None:
    """Who jobs run as: ``user_name`` if it exists, else ``nobody``; None if the server is not
    root (then jobs run as the server's own uid inside a user namespace).

    Raises ``LookupError`` if the server is root and neither user exists: root must never run
    untrusted code as itself.
    """
    uid = os.geteuid() if server_uid is None else server_uid
    if uid != 0:
        return None
    for name in (user_name, "nobody"):
        if not name:
            continue
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            continue
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    raise LookupError(f"neither user {user_name!r} nor 'nobody' exists")


# --- limits -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Per-process rlimits of a run. No RLIMIT_AS: it breaks node/V8 (notes §2)."""

    cpu_seconds: int
    file_size_bytes: int = 64 * 1024 * 1024
    open_files: int = 256

    @classmethod
    def for_timeout(cls, timeout: float) -> Limits:
        """CPU limit just above the wall limit: the wall timer should normally fire first."""
        return cls(cpu_seconds=max(1, math.ceil(timeout)) + 1)


def launcher_argv(
    limits: Limits, *, gate: bool, setpriv: str | None = None, run_as: RunAs | None = None
) -> list[str]:
    """The prefix every run starts with (see ``LAUNCHER``): the gate if ``gate``, the rlimits,
    then, given ``setpriv`` and ``run_as``, the drop to that uid with no supplementary groups."""
    cpu = limits.cpu_seconds
    argv = [
        LAUNCHER_SHELL, "-c", LAUNCHER, "deepexec-launch", "gate" if gate else "run",
        str(cpu), str(cpu + 1), str(-(-limits.file_size_bytes // 512)), str(limits.open_files),
    ]  # fmt: skip
    if setpriv is not None and run_as is not None:
        argv += [
            setpriv, f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--clear-groups",
            "--inh-caps=-all", "--",
        ]  # fmt: skip
    return argv


# --- environment and mounts -------------------------------------------------------------------


def env_name_problem(name: str) -> str | None:
    """Why a job may not set environment variable ``name``, or None if it may."""
    if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
        return f"{name} is reserved and cannot be set by a job"
    return None


def sandbox_env(home: str, user_env: Mapping[str, str], progress_fd: int | None) -> dict[str, str]:
    """The complete environment of a sandboxed program: nothing from the server's own."""
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": home,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for name, value in user_env.items():
        if env_name_problem(name) is None:
            env[name] = value
    if progress_fd is not None:
        env[PROGRESS_FD_ENV] = str(progress_fd)
    return env


def system_mounts(trees: Iterable[str] = SYSTEM_TREES) -> list[str]:
    """bwrap arguments that rebuild the host's system trees, read-only, in the sandbox's empty
    root: a symlink stays a symlink (``/bin -> usr/bin``), a directory is bound."""
    argv: list[str] = []
    for path in trees:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    return argv


def masked_dirs(
    extra: Iterable[str | os.PathLike[str]] = (), visible: Iterable[str] = SYSTEM_TREES
) -> list[str]:
    """The scratch dirs, then those of ``extra`` (the server's data, credentials and work dirs)
    that the sandbox would otherwise see because they lie inside a ``visible`` tree: each is
    covered with an empty tmpfs. Missing dirs are skipped (a bwrap mount target must exist)."""
    shown = [os.path.realpath(v) for v in visible if os.path.isdir(v) and not os.path.islink(v)]
    out = list(SCRATCH_DIRS)
    for item in extra:
        path = os.path.realpath(os.fspath(item))
        if path == "/" or not os.path.isdir(path):
            continue
        if not any(_inside(path, tree) for tree in shown):
            continue
        if any(_inside(path, m) for m in out):
            continue
        out.append(path)
    return out


def _inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def bwrap_argv(
    bwrap: str,
    *,
    job_dir: str,
    system: Sequence[str],
    masks: Sequence[str],
    env: Mapping[str, str],
    command: Sequence[str],
    status_fd: int | None = None,
    share_net: bool = False,
    seccomp_fd: int | None = None,
) -> list[str]:
    """The bubblewrap command line for one run (see module docstring): an empty root holding
    ``system`` (``system_mounts``), a fresh /dev and /proc, the scratch tmpfs dirs and ``masks``,
    and the job dir as the home and working directory."""
    argv = [
        bwrap,
        "--unshare-all",
        # --disable-userns needs an explicit --unshare-user (bwrap 0.8).
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        # A new session blocks TIOCSTI injection into a controlling terminal.
        "--new-session",
    ]
    if share_net:
        argv.append("--share-net")
    if status_fd is not None:
        # Reports the sandbox init's host pid, so the server can reap it (see reap_sandbox_init).
        argv += ["--json-status-fd", str(status_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += system
    argv += ["--dev", "/dev", "--proc", "/proc"]
    for path in masks:
        argv += ["--size", str(TMPFS_SIZE), "--tmpfs", path]
    argv += [
        # /home is a tmpfs by now, so the mount target can be created.
        "--bind", job_dir, SANDBOX_HOME,
        # The root is bwrap's own tmpfs, holding only the mount points: read-only too.
        "--remount-ro", "/",
        "--chdir", SANDBOX_HOME,
        "--hostname", "sandbox",
        "--clearenv",
    ]  # fmt: skip
    for name, value in env.items():
        argv += ["--setenv", name, value]
    argv.append("--")
    argv += command
    return argv


# --- exit status ------------------------------------------------------------------------------


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; ``SIG<n>`` for numbers without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def decode_exit(returncode: int, via_bwrap: bool) -> tuple[int | None, str | None]:
    """(exit_code, signal name) of a run.

    bwrap's init turns "killed by signal N" into exit status 128+N, so through bwrap a status
    above 128 with a valid signal number is read as that signal (a program calling
    ``exit(137)`` is indistinguishable; the shells' own convention makes this the useful
    reading).
    """
    if returncode < 0:
        return None, signal_name(-returncode)
    if via_bwrap and 128 < returncode < 128 + signal.NSIG:
        return None, signal_name(returncode - 128)
    return returncode, None


def is_bwrap_failure(returncode: int, stderr: bytes) -> bool:
    """Did the launcher or bwrap fail before the program ran (an rlimit refused, namespaces
    refused, a mount error...)?"""
    if returncode == 112 and stderr.startswith(b"deepexec-launch: "):
        return True
    return returncode == 1 and stderr.startswith(b"bwrap: ")


# --- output capture ---------------------------------------------------------------------------


class StreamCapture:
    """Keeps the first ``limit`` bytes of a stream and decodes UTF-8 incrementally for live
    output; the rest is counted and dropped, so memory stays flat whatever the program writes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self.total_bytes = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> str:
        """Record ``chunk``; return the newly decodable text of the kept part ('' if none)."""
        self.total_bytes += len(chunk)
        room = self.limit - len(self.data)
        if room <= 0:
            self.truncated = self.truncated or bool(chunk)
            return ""
        kept = chunk[:room]
        if len(kept) < len(chunk):
            self.truncated = True
        self.data += kept
        final = len(self.data) >= self.limit
        return self._decoder.decode(kept, final=final)

    def finish(self) -> str:
        """Flush the decoder (an incomplete trailing character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)

    def text(self) -> str:
        """Everything kept, decoded."""
        return bytes(self.data).decode("utf-8", errors="replace")


# --- running ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RunRequest:
    """Everything ``run_program`` needs to launch and supervise one program."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    stdin: bytes
    timeout: float
    max_output_bytes: int
    #: Set only when ``argv`` does not drop the uid itself: the spawn then does (a full fork).
    run_as: RunAs | None
    #: True when ``argv`` starts a bwrap sandbox (decides the kill and exit decoding).
    sandboxed: bool
    #: (read, write) ends of the progress pipe from ``open_progress_pipe``; the write end is
    #: inherited by the program under its own number (named in its environment).
    progress_pipe: tuple[int, int] | None = None
    #: (read, write) ends of the pipe given to ``bwrap --json-status-fd``.
    status_pipe: tuple[int, int] | None = None
    #: Further fds the launcher inherits (the seccomp filter pipe); closed here after spawn.
    inherit_fds: tuple[int, ...] = ()
    #: Called with the launcher's pid before it may run anything (``argv`` must then start
    #: with ``launcher_argv(..., gate=True)``): puts it into the job's cgroup.
    attach: Callable[[int], None] | None = None
    #: Last step of the ordered kill: kill whatever is left in the job's cgroup.
    kill_rest: Callable[[], None] | None = None
    #: Polled every ``WATCH_INTERVAL_S``: a limit name (``cpu_limit``) stops the run.
    watch: Callable[[], str | None] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    """What happened to a run; the executor turns it into a job outcome."""

    returncode: int
    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    canceled: bool
    wall_time_ms: int
    #: bwrap itself failed before the program started (its message is in ``stderr``).
    sandbox_failed: bool
    #: The run was stopped for exceeding a limit: ``output_limit`` or what ``watch`` said.
    limit_exceeded: str | None = None


OutputSink = Callable[[str, str], None]
ProgressSink = Callable[[ProgressUpdate], None]


def _sandbox_init_pids(launcher_pid: int) -> list[int]:
    """Children of the outer bwrap: the sandbox's pid 1 (as seen from the host)."""
    try:
        text = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _kill(pid: int, how: Callable[[int, int], None] = os.kill) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        how(pid, signal.SIGKILL)


async def _kill_run(
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
        for pid in _sandbox_init_pids(proc.pid):
            _kill(pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_GRACE_S)
    # start_new_session made the launcher a group leader: its pgid is its pid.
    _kill(proc.pid, os.killpg)
    _kill(proc.pid)
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
            # Not (yet) adopted: only possible while the outer bwrap is still exiting.
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


def _close_process_transport(proc: asyncio.subprocess.Process) -> None:
    # asyncio.subprocess.Process has no public close(); without it pipes left open by a
    # killed-but-unreaped run would leak until garbage collection.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


async def _pump(
    reader: asyncio.StreamReader,
    capture: StreamCapture,
    name: str,
    sink: OutputSink,
    overflow: asyncio.Event,
) -> None:
    while chunk := await reader.read(READ_CHUNK):
        text = capture.feed(chunk)
        if text:
            sink(name, text)
        if capture.truncated:
            overflow.set()
    tail = capture.finish()
    if tail:
        sink(name, tail)


async def _pump_progress(reader: asyncio.StreamReader, sink: ProgressSink) -> None:
    lines = ProgressLineBuffer()
    last: ProgressUpdate | None = None
    while chunk := await reader.read(4096):
        for update in lines.feed(chunk):
            if update != last:
                sink(update)
                last = update


async def _feed_stdin(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    # The program may exit or close stdin without reading it all.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if data:
            proc.stdin.write(data)
            await proc.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
        proc.stdin.close()
        await proc.stdin.wait_closed()


async def _open_pipe_reader(read_fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader)
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    return reader, transport


async def run_program(
    req: RunRequest,
    cancel: asyncio.Event,
    on_output: OutputSink,
    on_progress: ProgressSink,
) -> RunResult:
    """Run ``req.argv`` to its end, its wall timeout, or ``cancel``; stream its output.

    Takes ownership of ``req.progress_pipe`` (both ends are closed here). Always leaves no
    process of the run behind when it returns.
    """
    progress_r, progress_w = req.progress_pipe if req.progress_pipe else (None, None)
    status_r, status_w = req.status_pipe if req.status_pipe else (None, None)
    pass_fds = tuple(fd for fd in (progress_w, status_w) if fd is not None) + req.inherit_fds
    spawn_kwargs: dict[str, object] = {}
    if req.run_as is not None:
        spawn_kwargs.update(user=req.run_as.uid, group=req.run_as.gid, extra_groups=[])
    # The launcher and both bwraps keep the mark; the program does not (bwrap --clearenv).
    env = {**req.env, **death_watch_env()} if req.sandboxed else req.env
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *req.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=req.cwd,
            pass_fds=pass_fds,
            start_new_session=True,
            limit=READ_CHUNK,
            **spawn_kwargs,  # type: ignore[arg-type]
        )
    except BaseException:
        for fd in (progress_r, status_r):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (progress_w, status_w, *req.inherit_fds):
            if fd is not None:
                os.close(fd)
    assert proc.stdout is not None and proc.stderr is not None
    stdin_data = req.stdin
    if req.attach is not None:
        try:
            # Off the loop: the first cgroup.procs write after idle can block ~20 ms (notes §3.5).
            await asyncio.to_thread(req.attach, proc.pid)
        except BaseException:
            _kill(proc.pid, os.killpg)
            _kill(proc.pid)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), DRAIN_GRACE_S)
            _close_process_transport(proc)
            for fd in (progress_r, status_r):
                if fd is not None:
                    os.close(fd)
            raise
        # Opens the gate (see LAUNCHER).
        stdin_data = b"\n" + stdin_data

    out_cap = StreamCapture(req.max_output_bytes)
    err_cap = StreamCapture(req.max_output_bytes)
    overflow = asyncio.Event()
    tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(_pump(proc.stdout, out_cap, "stdout", on_output, overflow)),
        asyncio.create_task(_pump(proc.stderr, err_cap, "stderr", on_output, overflow)),
        asyncio.create_task(_feed_stdin(proc, stdin_data)),
    ]
    progress_transport: asyncio.BaseTransport | None = None
    if progress_r is not None:
        reader, progress_transport = await _open_pipe_reader(progress_r)
        tasks.append(asyncio.create_task(_pump_progress(reader, on_progress)))

    exited = asyncio.create_task(proc.wait())
    canceled_wait = asyncio.create_task(cancel.wait())
    overflow_wait = asyncio.create_task(overflow.wait())
    timed_out = canceled = False
    limit_exceeded: str | None = None
    deadline = started + req.timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            step = remaining if req.watch is None else min(remaining, WATCH_INTERVAL_S)
            done, _ = await asyncio.wait(
                {exited, canceled_wait, overflow_wait},
                timeout=max(0.0, step),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited in done:
                break
            if canceled_wait in done:
                canceled = True
            elif overflow_wait in done:
                limit_exceeded = "output_limit"
            elif req.watch is not None and (reason := req.watch()) is not None:
                limit_exceeded = reason
            elif time.monotonic() >= deadline:
                timed_out = True
            else:
                continue
            await _kill_run(proc, req.sandboxed, req.kill_rest)
            break
        await exited
        # Pipes reach EOF once every process holding them is gone; in a sandbox that is as
        # soon as its init exits. Outside one, an escaped daemon may hold them: kill the group.
        _, pending = await asyncio.wait(tasks[:2], timeout=DRAIN_GRACE_S)
        if pending:
            await _kill_run(proc, req.sandboxed, req.kill_rest)
            _, pending = await asyncio.wait(tasks[:2], timeout=DRAIN_GRACE_S)
    finally:
        canceled_wait.cancel()
        overflow_wait.cancel()
        if proc.returncode is None:
            await _kill_run(proc, req.sandboxed, req.kill_rest)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited, DRAIN_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, exited, return_exceptions=True)
        if progress_transport is not None:
            progress_transport.close()
        _close_process_transport(proc)
        if status_r is not None:
            init_pid = parse_child_pid(read_available(status_r))
            os.close(status_r)
            if init_pid is not None:
                await reap_sandbox_init(init_pid)

    returncode = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    stderr_bytes = bytes(err_cap.data)
    exit_code, sig = decode_exit(returncode, req.sandboxed)
    killed = timed_out or canceled or limit_exceeded is not None
    if killed and sig is None and exit_code is not None:
        # We killed it: report the kill, whatever status the launcher passed on.
        exit_code, sig = None, "SIGKILL"
    return RunResult(
        returncode=returncode,
        exit_code=exit_code,
        signal=sig,
        stdout=out_cap.text(),
        stderr=err_cap.text(),
        stdout_truncated=out_cap.truncated,
        stderr_truncated=err_cap.truncated,
        timed_out=timed_out,
        canceled=canceled,
        wall_time_ms=int((time.monotonic() - started) * 1000),
        sandbox_failed=req.sandboxed and not killed and is_bwrap_failure(returncode, stderr_bytes),
        limit_exceeded=limit_exceeded,
    )


def open_pipe() -> tuple[int, int]:
    """A (read, write) pipe; only the write end is passed to the launched process."""
    read_fd, write_fd = os.pipe()
    return read_fd, write_fd
