"""The server-side commands: ``serve`` (API + scheduler + runners in one process), ``worker``
(runners only, on a shared PostgreSQL store), ``keys`` (API keys, straight on the database),
``mcp`` (MCP over stdio), ``doctor`` (what the sandbox can use on this host)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from .common import CliError, configure_logging, server_opts, settings_from_args
from .render import table

if TYPE_CHECKING:
    from .common import Subparsers


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's bound TCP socket (uvicorn listens on it), so the real port is known before
    serving even when ``port`` is 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets it knows are TCP, and
    # without it every response waited ~40 ms for the client's delayed ACK (bench #3).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CliError(
            f"cannot listen on {host}:{port}: {exc.strerror}; pick another with --port"
        ) from exc
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..api.connections import connection_cap, limited_protocol, raise_file_limit
    from ..app import create_app

    configure_logging(args.log_level)
    settings = settings_from_args(args)
    sock = listen_socket(settings.host, settings.port)
    settings = settings.model_copy(update={"port": sock.getsockname()[1]})
    url = settings.effective_database_url
    if args.no_runners and url.startswith("sqlite:"):
        raise CliError(
            "--no-runners needs a store that workers share: pass --database-url "
            "postgresql://... and start `deepexec worker` processes on it"
        )
    app = create_app(settings, provision_credentials=True, run_jobs=not args.no_runners)
    file_limit = raise_file_limit()
    max_connections = connection_cap(settings.max_connections, file_limit)
    if max_connections < settings.max_connections:
        logging.getLogger("deepexec_server").warning(
            "serving at most %d connections (max_connections is %d, the open-file limit %d)",
            max_connections,
            settings.max_connections,
            file_limit,
        )
    # The stdlib loop, not uvloop: the sandbox drops privileges with subprocess' user=/group=,
    # which uvloop's subprocess support does not implement.
    config = uvicorn.Config(
        app,
        http=limited_protocol(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            max_connections=max_connections,
        ),
        log_level=args.log_level.lower(),
        access_log=False,
        lifespan="on",
        loop="asyncio",
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    print(
        f"DeepExec serving on {settings.base_url} — API docs at {settings.base_url}/docs; "
        f"credentials for this user in {settings.credentials_file}",
        file=sys.stderr,
    )
    server.run(sockets=[sock])
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    from ..app import build_engine

    configure_logging(args.log_level)
    settings = settings_from_args(args)
    url = settings.effective_database_url
    if url.startswith("sqlite:"):
        raise CliError(
            "a worker shares its store with `deepexec serve`: pass --database-url "
            "postgresql://... (SQLite belongs to one server process)"
        )

    async def run() -> int:
        engine = build_engine(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with engine.running():
            log = logging.getLogger("deepexec_server")
            log.info(
                "worker %s running jobs from %s (%s)%s",
                engine.worker.owner,
                url.split("@")[-1],
                ", ".join(f"{t}={n}" for t, n in settings.concurrency.items()),
                " until the queue is idle" if args.burst else "",
            )
            if not args.burst:
                await stop.wait()
            elif await _first(engine.worker.run_until_idle(), stop.wait()) == 0:
                log.info("worker %s: the queue is idle; stopping", engine.worker.owner)
        return 0

    return asyncio.run(run())


async def _first(*waits: Coroutine[Any, Any, Any]) -> int:
    """Run ``waits`` until one returns (or raises, which is raised); cancel the others.
    Returns the index of the one that ended."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    first = next(t for t in tasks if t in done)
    first.result()
    return tasks.index(first)


def cmd_keys(args: argparse.Namespace) -> int:
    from ..auth import generate_key
    from ..domain import utcnow
    from ..store import open_store

    settings = settings_from_args(args)

    async def run() -> int:
        store = open_store(settings.effective_database_url)
        await store.open()
        try:
            if args.keys_command == "create":
                secret, key = generate_key(args.tenant, args.name or f"key for {args.tenant}")
                await store.create_api_key(key)
                print(secret)
                print(
                    f"created {key.id} for tenant {key.tenant_id!r}; the key above is shown "
                    "only once",
                    file=sys.stderr,
                )
            elif args.keys_command == "list":
                keys = await store.list_api_keys(args.tenant)
                rows = [
                    [
                        k.id,
                        k.tenant_id,
                        "revoked" if k.revoked_at else "active",
                        k.created_at.strftime("%Y-%m-%d %H:%M"),
                        k.name,
                    ]
                    for k in keys
                ]
                table(["ID", "TENANT", "STATE", "CREATED", "NAME"], rows)
            else:
                revoked = await store.revoke_api_key(args.key_id, utcnow())
                if revoked is None:
                    raise CliError(f"no API key {args.key_id!r} (see `deepexec keys list`)")
                print(f"revoked {revoked.id} (tenant {revoked.tenant_id!r})", file=sys.stderr)
            return 0
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_mcp(args: argparse.Namespace) -> int:
    from ..mcp import run_stdio

    return run_stdio(settings_from_args(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..executors.sandbox.probe import probe_host

    settings = settings_from_args(args)
    lines = probe_host(settings)
    ok = True
    for line in lines:
        print(("OK       " if line.ok else "MISSING  ") + f"{line.mechanism}: {line.detail}")
        ok = ok and line.ok
    return 0 if ok else 1


# --- parsers ------------------------------------------------------------------------------------


def add_run_parsers(sub: Subparsers) -> None:
    """The commands that run jobs: serve, worker."""
    _add_serve(sub)
    _add_worker(sub)


def add_admin_parsers(sub: Subparsers) -> None:
    """The commands for the host: keys, mcp, doctor."""
    p = sub.add_parser("keys", help="manage API keys (on the server's database)")
    server_opts(p)
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = ks.add_parser("create", help="create a key for a tenant; prints it once")
    k.add_argument("--tenant", required=True)
    k.add_argument("--name")
    k = ks.add_parser("list", help="list keys")
    k.add_argument("--tenant")
    k = ks.add_parser("revoke", help="revoke a key by id")
    k.add_argument("key_id")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("mcp", help="serve the Model Context Protocol over stdio (for MCP hosts)")
    server_opts(p)
    p.set_defaults(func=cmd_mcp)

    p = sub.add_parser("doctor", help="check what the sandbox can use on this host")
    p.set_defaults(func=cmd_doctor)


def _add_serve(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="run the server (API, scheduler and runners)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    server_opts(p)
    p.add_argument(
        "--concurrency", help="runner slots per job type, e.g. 'code_execution=4,text_generation=1'"
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="accept requests without an API key (all jobs in one tenant)",
    )
    p.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="UNSAFE: if the sandbox cannot work here, run untrusted code without "
        "namespaces (only for trusted code on a throwaway machine)",
    )
    p.add_argument(
        "--no-runners",
        action="store_true",
        help="serve the API only; `deepexec worker` processes on the same "
        "PostgreSQL store run the jobs",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def _add_worker(sub: Subparsers) -> None:
    p = sub.add_parser(
        "worker",
        help="run jobs from a shared PostgreSQL store (no API)",
        description="Run jobs from the PostgreSQL store a `deepexec serve --no-runners` "
        "server (or any other) shares: claim them by priority onto this machine's runner "
        "slots until stopped (SIGTERM, SIGINT), or with --burst until the queue is idle.",
    )
    server_opts(p)
    p.add_argument(
        "--concurrency", help="runner slots per job type, e.g. 'code_execution=4,text_generation=1'"
    )
    p.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="UNSAFE: run untrusted code without namespaces if the sandbox cannot work",
    )
    p.add_argument(
        "--burst",
        action="store_true",
        help="run until the queue is idle (no job pending, none running here), then exit 0",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)
