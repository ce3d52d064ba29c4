"""DeepExec's jobs as Model Context Protocol tools and tasks.

``install_mcp`` serves Streamable HTTP at ``/mcp`` inside ``deepexec serve``; ``run_stdio``
serves stdio for ``deepexec mcp``. Both use one server (``server.build_server``) over a small
job-operations protocol (``jobs.JobOps``) with an in-process and an SDK-backed implementation.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..settings import Settings
    from ..web.services import Services


def install_mcp(app: FastAPI, services: Services) -> contextlib.AbstractAsyncContextManager[None]:
    """Mount the Streamable HTTP endpoint at /mcp; the returned context runs in the lifespan."""
    from .http import install

    return install(app, services)


def run_stdio(settings: Settings) -> int:
    """Serve MCP over stdio for one host process."""
    from .stdio import run_stdio as run

    return run(settings)
