"""A code job's limits: what it gets by default, the most it may ask for, and the compile step's.

``JobLimits`` is the one limits type: the executor validates it, the sandbox enforces it
(rlimits, the job's cgroup, the work dir's quota, the output caps; docs/sandbox.md, "Bounds").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from ..settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class JobLimits:
    """A code job's effective limits."""

    #: None: just above the job's wall-clock timeout (the wall timer normally fires first).
    cpu_time_s: int | None
    memory_mb: int
    max_processes: int
    max_output_bytes: int
    max_file_size_mb: int
    #: The job dir's quota: every file and directory the program writes there.
    disk_mb: int

    def to_dict(self) -> dict[str, int | None]:
        """As stored in the job's data. (``dataclasses.asdict`` deep-copies every int.)"""
        return {name: getattr(self, name) for name in self.__slots__}

    def cpu_seconds(self, timeout: float) -> int:
        """The effective CPU-time limit for a job with this wall-clock ``timeout`` (the one
        place it is worked out)."""
        return self.cpu_time_s or max(1, math.ceil(timeout)) + 1


#: ``disk_mb`` is not used: the compiler writes into the job's dir, under the job's own quota.
COMPILE_LIMITS = JobLimits(
    cpu_time_s=60, memory_mb=1024, max_processes=256, max_output_bytes=64 * 1024,
    max_file_size_mb=256, disk_mb=1024,
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class LimitPolicy:
    """What a job gets when it asks for nothing, and the most it may ask for (server settings)."""

    defaults: JobLimits
    maxima: Mapping[str, int]

    @classmethod
    def from_settings(cls, settings: Settings) -> LimitPolicy:
        """``Settings.code_limits_default``/``code_limits_max`` and ``max_output_bytes``."""
        d = settings.code_limits_default
        defaults = JobLimits(
            cpu_time_s=d.get("cpu_time_s"),
            memory_mb=d["memory_mb"],
            max_processes=d["max_processes"],
            max_output_bytes=settings.max_output_bytes,
            max_file_size_mb=d["max_file_size_mb"],
            disk_mb=d["disk_mb"],
        )
        return cls(defaults, dict(settings.code_limits_max))
