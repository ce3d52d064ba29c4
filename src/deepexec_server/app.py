"""The composition root: ``build_engine(settings)`` makes the store, the executors, the job
service and the worker, for ``deepexec serve`` and ``deepexec worker`` alike; ``create_app``
mounts every door on that engine."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from deepexec_sdk import __version__

from . import ui
from .api import batches, middleware, webhooks
from .api.errors import install_error_handlers
from .api.routes import declare_bearer_auth, health, router
from .auth import Authenticator, provision_local_key
from .compat import judge0, openai, piston
from .engine import EngineRuntime
from .errors import DeepExecError
from .executors.base import Executor
from .mcp import install_mcp
from .metrics import Metrics
from .settings import Settings
from .store import Store, open_store
from .web.services import Services

logger = logging.getLogger("deepexec_server")


class StoreLockedError(DeepExecError, RuntimeError):
    pass


@contextlib.contextmanager
def exclusive_sqlite(url: str) -> Iterator[None]:
    """Hold an exclusive lock next to a SQLite database for the server's life: two servers on
    one file would each reap the other's running jobs."""
    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLockedError(
                f"another DeepExec server is using {path}; stop it, or give this one its own "
                "database with --database-url (PostgreSQL is the store to share)"
            ) from None
        yield
    finally:
        os.close(fd)


def default_executors(settings: Settings) -> dict[str, Executor]:
    from .executors.code import CodeExecutor
    from .executors.text import TextExecutor

    return {"code_execution": CodeExecutor(settings), "text_generation": TextExecutor(settings)}


def build_engine(
    settings: Settings,
    *,
    store: Store | None = None,
    executors: Mapping[str, Executor] | None = None,
    metrics: Metrics | None = None,
    exclusive_store: bool | None = None,
) -> EngineRuntime:
    """The engine of one process, not yet started: the store ``settings`` names (unless one
    is given, not yet opened), the default executors (unless given), the job service and the
    worker. ``exclusive_store`` defaults to whether the store is SQLite, which one server
    process owns (see ``exclusive_sqlite``)."""
    url = settings.effective_database_url
    return EngineRuntime(
        settings,
        store if store is not None else open_store(url),
        executors if executors is not None else default_executors(settings),
        metrics=metrics,
        exclusive_store=url.startswith("sqlite:") if exclusive_store is None else exclusive_store,
    )


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    executors: Mapping[str, Executor] | None = None,
    provision_credentials: bool = False,
    run_jobs: bool = True,
) -> ASGIApp:
    """The whole server as an ASGI app. Starting it (lifespan) opens the store, reaps what a
    crash left, and starts the engine; stopping it stops running jobs and closes the store.
    With ``provision_credentials``, it also makes sure ``settings.credentials_file`` holds a
    working key and this server's URL, so the SDK and CLI of this user need no configuration.
    Without ``run_jobs`` the server only serves the API; ``deepexec worker`` processes sharing
    its PostgreSQL store run the jobs."""
    url = settings.effective_database_url
    metrics = Metrics()
    engine = build_engine(settings, store=store, executors=executors, metrics=metrics)
    the_store = engine.store
    services = Services(
        settings=settings,
        store=the_store,
        engine=engine.service,
        auth=Authenticator(the_store, enabled=settings.auth_enabled),
        metrics=metrics,
    )
    # A purged result must not be served from the cache of ended jobs.
    engine.worker.result_purge_listeners.append(services.status_cache.discard)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with contextlib.ExitStack() as stack:
            if url.startswith("sqlite:"):
                stack.enter_context(exclusive_sqlite(url))
            t0 = time.monotonic()
            async with engine.running(run_jobs=run_jobs):
                if provision_credentials:
                    await provision_local_key(
                        the_store, settings.credentials_file, settings.base_url
                    )
                logger.info(
                    "DeepExec engine ready in %.0f ms (store %s)",
                    (time.monotonic() - t0) * 1000,
                    url.split("://")[0],
                )
                async with mcp_lifespan:
                    yield

    app = FastAPI(
        title="DeepExec",
        version=__version__,
        summary="Sandboxed code execution and text generation behind one job lifecycle.",
        lifespan=lifespan,
    )
    app.state.services = services
    mcp_lifespan = install_mcp(app, services)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(health)
    app.include_router(piston.router())
    app.include_router(judge0.router())
    app.include_router(openai.router())
    ui.install(app, services, ui.Sessions(ui.load_secret(settings.ui_secret, settings.data_dir)))
    _openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = declare_bearer_auth(batches.declare_batch_body(_openapi()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return middleware.wrap(app, services)
