"""The code sandbox: one untrusted program run in bubblewrap under a job's limits, and stopped
completely. See docs/sandbox.md for the layers, the threat model and the process model.

The executor's whole use of it::

    host = start_host(settings)             # once, off the event loop
    job = new_job_dir(host.work_root, ...)  # the job's work dir (workdirs)
    result = await host.sandbox.run(Program(command, job, timeout, files=...), limits)
    remove_job_dir(job)

``Sandbox.run`` is the seam another runner (a warm pool, a remote node) replaces. Modules:
``run`` (``Program``, ``Sandbox``), ``host`` (start-up), ``argv`` (command line and
environment, pure), ``supervise`` (the launch and the run loop), ``capture`` (output and
progress), ``reaping`` (the ordered kill, reaping the init), ``deathwatch`` (if the server
dies), ``workdirs`` and ``trees`` (work dirs, their quota, iterative walks), ``cgroups``,
``seccomp_filter``, ``probe`` (the other layers), ``identity`` (the sandbox uid),
``progress`` (the progress line format), ``result`` (``RunResult``).
"""

from .argv import env_name_problem
from .cgroups import CgroupError, CgroupStats
from .host import NOT_STARTED, Host, start_host, unavailable_message
from .identity import RunAs
from .progress import ProgressUpdate
from .result import RunResult
from .run import Program, Sandbox
from .workdirs import DiskFull, DiskGauge, JobDir, new_job_dir, remove_job_dir, write_files

__all__ = [
    "NOT_STARTED",
    "CgroupError",
    "CgroupStats",
    "DiskFull",
    "DiskGauge",
    "Host",
    "JobDir",
    "Program",
    "ProgressUpdate",
    "RunAs",
    "RunResult",
    "Sandbox",
    "env_name_problem",
    "new_job_dir",
    "remove_job_dir",
    "start_host",
    "unavailable_message",
    "write_files",
]
