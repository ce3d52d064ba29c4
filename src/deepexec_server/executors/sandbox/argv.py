"""The command line and environment of a sandboxed run, built from nothing (pure).

``launcher_argv`` is the prefix every run starts with: a fixed ``/bin/sh`` script that holds
at a gate until the server has put it into the job's cgroup, sets the rlimits, then execs the
drop to the sandbox uid (``setpriv``) and bubblewrap (``bwrap_argv``). See docs/sandbox.md,
"The process model".
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from .identity import RunAs
from .progress import PROGRESS_FD_ENV

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
#: Open files a sandboxed process may hold (RLIMIT_NOFILE).
OPEN_FILES = 256
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


def launcher_argv(
    *,
    cpu_seconds: int,
    file_size_bytes: int,
    open_files: int = OPEN_FILES,
    gate: bool,
    setpriv: str | None = None,
    run_as: RunAs | None = None,
) -> list[str]:
    """The prefix every run starts with (see ``LAUNCHER``): the gate if ``gate``, the rlimits
    (``cpu_seconds`` soft, one more hard; no RLIMIT_AS: it breaks node/V8), then, given
    ``setpriv`` and ``run_as``, the drop to that uid with no supplementary groups."""
    argv = [
        LAUNCHER_SHELL, "-c", LAUNCHER, "deepexec-launch", "gate" if gate else "run",
        str(cpu_seconds), str(cpu_seconds + 1), str(-(-file_size_bytes // 512)), str(open_files),
    ]  # fmt: skip
    if setpriv is not None and run_as is not None:
        argv += [
            setpriv, f"--reuid={run_as.uid}", f"--regid={run_as.gid}", "--clear-groups",
            "--inh-caps=-all", "--",
        ]  # fmt: skip
    return argv


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
    """The bubblewrap command line for one run (docs/sandbox.md): an empty root holding
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
