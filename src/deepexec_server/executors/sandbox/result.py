"""What a run did, and how its exit status reads (pure)."""

from __future__ import annotations

import dataclasses
import signal

from .cgroups import CgroupStats


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
    #: The run was stopped for exceeding a limit: ``output_limit``, ``cpu_limit`` or
    #: ``disk_limit``.
    limit_exceeded: str | None = None
    #: The job cgroup's figures (None where this host has no cgroups).
    stats: CgroupStats | None = None


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
