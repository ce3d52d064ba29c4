"""The job operations the MCP tools need, as one small protocol with two implementations:
``EngineJobOps`` (in-process engine, one tenant; the HTTP endpoint inside ``deepexec serve``)
and ``ClientJobOps`` (a running server through the SDK; ``deepexec mcp`` over stdio).

Both speak the SDK's wire models, so the tool layer is written once and cannot tell them apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable
from typing import Literal, Protocol

from deepexec_sdk.job_data import MAX_TOKENS_LIMIT
from deepexec_sdk.types import (
    JobStatus,
    JobSubmitRequest,
    MCPCancelJobResponse,
    MCPJobEvent,
    MCPJobListResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
)

from ..errors import DeepExecError


@dataclasses.dataclass(frozen=True, slots=True)
class HostOffer:
    """What the server behind the tools runs, for their input schemas: the canonical names of
    its code languages and of its usable models, its longest job timeout, the most tokens its
    usable models can generate and its code limits' maxima (None or empty: unknown, the server
    still refuses a larger value with a message naming its maximum)."""

    languages: tuple[str, ...]
    models: tuple[str, ...] = ()
    max_timeout: int | None = None
    max_tokens: int | None = None
    limit_maxima: tuple[tuple[str, int], ...] = ()


def max_tokens(context_lengths: Iterable[int | None]) -> int | None:
    """The most tokens a job may ask of the largest of these models (None: no model known)."""
    known = [n for n in context_lengths if n]
    return min(MAX_TOKENS_LIMIT, max(known)) if known else None


ErrorKind = Literal["not_found", "invalid", "conflict", "unavailable", "unauthorized"]


class JobOpsError(DeepExecError):
    """A job operation was refused. ``kind`` says why, independent of the transport:
    ``not_found`` (no such job for this tenant), ``invalid`` (bad job or arguments),
    ``conflict`` (e.g. cancelling an ended job), ``unavailable`` (server down or shutting
    down), ``unauthorized`` (the key was refused)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message


class JobOps(Protocol):
    """Job operations scoped to one tenant. Every method raises ``JobOpsError`` on refusal."""

    async def submit(self, request: JobSubmitRequest) -> MCPJobResponse:
        """Store a new job; it is durable (``get`` finds it) once this returns."""
        ...

    async def get(self, job_id: str) -> MCPJobStatusResponse:
        """The job's current state."""
        ...

    async def wait(self, job_id: str, timeout: float) -> MCPJobStatusResponse:
        """The job once terminal, or as it is after ``timeout`` seconds."""
        ...

    async def cancel(self, job_id: str, reason: str | None) -> MCPCancelJobResponse:
        """Ask a pending or running job to stop."""
        ...

    async def list(
        self,
        *,
        status: JobStatus | None,
        tags: list[str],
        name: str | None,
        limit: int,
        cursor: str | None,
    ) -> MCPJobListResponse:
        """A page of this tenant's jobs, newest first."""
        ...

    def events(self, job_id: str) -> AsyncIterator[MCPJobEvent]:
        """The job's live events: its status first, ending with a terminal status."""
        ...

    async def offer(self) -> HostOffer:
        """What the server runs: its languages, usable models and longest timeout."""
        ...
