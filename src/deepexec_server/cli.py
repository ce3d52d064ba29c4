"""The ``deepexec`` command.

Server side: ``serve`` (API + scheduler + runners in one process), ``keys`` (API keys, straight
on the database), ``doctor`` (what the sandbox can use on this host).
Client side, through the SDK: ``submit``, ``status``, ``wait``, ``cancel``, ``list``, ``logs``,
``models`` (text generation models and what each needs), ``languages`` (code languages).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from deepexec_sdk import (
    DeepExecClient,
    DeepExecError,
    MCPJobStatusResponse,
)

from . import errors
from .executors.languages import LANGUAGES
from .settings import Settings, SettingsError

#: A program file's language by its suffix: each language's own (``main.c`` -> c), and a few
#: other common ones.
LANGUAGE_BY_SUFFIX = {
    **{Path(lang.filename).suffix: lang.name for lang in LANGUAGES},
    ".mjs": "javascript",
    ".bash": "bash",
    ".cc": "cpp",
    ".cxx": "cpp",
}
EXIT_BY_STATUS = {"COMPLETED": 0, "FAILED": 1, "CANCELED": 3}


class CliError(errors.DeepExecError):
    """A usage problem; printed as ``deepexec: error: ...`` with exit status 2."""


# --- server commands --------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        database_url=getattr(args, "database_url", None),
        unsafe_no_sandbox=True if getattr(args, "unsafe_no_sandbox", False) else None,
        auth_enabled=False if getattr(args, "no_auth", False) else None,
        concurrency=_concurrency_arg(getattr(args, "concurrency", None)),
    )


def _concurrency_arg(raw: str | None) -> dict[str, int] | None:
    if not raw:
        return None
    from .settings import _parse_concurrency

    return {**Settings().concurrency, **_parse_concurrency(raw)}


def _configure_logging(level: str) -> None:
    from .api.connections import AcceptErrorFilter

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("asyncio").addFilter(AcceptErrorFilter())


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

    from .api.connections import connection_cap, limited_protocol, raise_file_limit
    from .app import create_app

    _configure_logging(args.log_level)
    settings = _settings(args)
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

    from .app import default_executors
    from .engine import Engine
    from .store import open_store

    _configure_logging(args.log_level)
    settings = _settings(args)
    url = settings.effective_database_url
    if url.startswith("sqlite:"):
        raise CliError(
            "a worker shares its store with `deepexec serve`: pass --database-url "
            "postgresql://... (SQLite belongs to one server process)"
        )

    async def run() -> int:
        store = open_store(url)
        await store.open()
        engine = Engine(settings, store, default_executors(settings), exclusive_store=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await engine.start()
            logging.getLogger("deepexec_server").info(
                "worker %s running jobs from %s (%s)",
                engine.owner,
                url.split("@")[-1],
                ", ".join(f"{t}={n}" for t, n in settings.concurrency.items()),
            )
            await stop.wait()
        finally:
            await engine.stop()
            await store.close()
        return 0

    return asyncio.run(run())


def cmd_keys(args: argparse.Namespace) -> int:
    from .auth import generate_key
    from .domain import utcnow
    from .store import open_store

    settings = _settings(args)

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
                _table(["ID", "TENANT", "STATE", "CREATED", "NAME"], rows)
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
    from .mcp import run_stdio

    return run_stdio(_settings(args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from .executors.sandbox.probe import probe_host

    settings = _settings(args)
    lines = probe_host(settings)
    ok = True
    for line in lines:
        print(("OK       " if line.ok else "MISSING  ") + f"{line.mechanism}: {line.detail}")
        ok = ok and line.ok
    return 0 if ok else 1


# --- client commands --------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> DeepExecClient:
    return DeepExecClient(base_url=args.url, api_key=args.api_key)


def _submission(args: argparse.Namespace) -> tuple[str, dict[str, Any], str]:
    """(job_type, data, default name) from the submit flags."""
    if args.data is not None:
        try:
            data = json.loads(args.data)
        except ValueError as exc:
            raise CliError(f"--data is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CliError("--data must be a JSON object")
        return args.type or "code_execution", data, "cli job"
    if args.prompt is not None:
        data = {"prompt": args.prompt, "max_tokens": args.max_tokens}
        if args.model:
            data["model"] = args.model
        return "text_generation", data, "cli text"
    if args.code is None and args.file is None:
        raise CliError("say what to run: a FILE, --code CODE, --prompt TEXT, or --data JSON")
    if args.code is not None:
        code, language = args.code, args.language or "python"
    else:
        path = args.file
        code = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        language = args.language or LANGUAGE_BY_SUFFIX.get(Path(path).suffix, "python")
    data = {"code": code, "language": language}
    if args.stdin_file:
        data["stdin"] = Path(args.stdin_file).read_text(encoding="utf-8")
    return "code_execution", data, f"cli {language}"


def cmd_submit(args: argparse.Namespace) -> int:
    job_type, data, default_name = _submission(args)
    with _client(args) as client:
        job = client.submit_mcp_job(
            name=args.name or default_name,
            job_type=job_type,
            data=data,
            timeout=args.timeout,
            priority=args.priority,
            tags=args.tag or None,
        )
        if args.follow:
            return _follow(client, job.job_id, live_output=True)
        if args.wait:
            return _follow(client, job.job_id, live_output=False)
        print(job.job_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.get_mcp_job_status(args.job_id)
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        _print_status(status, sys.stdout)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, args.job_id, live_output=False, max_wait=args.timeout)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        res = client.cancel_mcp_job(args.job_id, reason=args.reason)
    print(f"{res.job_id} {res.status} (cancel requested at {res.canceled_at.isoformat()})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_mcp_jobs(
            status=args.status, tags=args.tag or None, name=args.name, limit=args.limit
        )
    if args.json:
        print(page.model_dump_json(indent=2))
        return 0
    rows = [
        [
            j.job_id,
            str(j.status),
            j.job_type,
            str(j.priority),
            j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            j.name,
        ]
        for j in page.jobs
    ]
    _table(["JOB", "STATUS", "TYPE", "PRI", "CREATED", "NAME"], rows)
    if page.next_cursor:
        print(f"(more: --limit or the SDK's cursor {page.next_cursor})", file=sys.stderr)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.follow:
            for event in client.stream_mcp_job_events(args.job_id):
                if event.type == "output" and event.text:
                    out = sys.stderr if event.stream == "stderr" else sys.stdout
                    out.write(event.text)
                    out.flush()
            return 0
        status = client.get_mcp_job_status(args.job_id)
    if status.result is None:
        print(
            f"{status.job_id} is {status.status} and has no output yet; "
            "`deepexec logs -f` follows it live",
            file=sys.stderr,
        )
        return 0
    _print_output(status.result)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        listing = client.list_models()
    if args.json:
        print(listing.model_dump_json(indent=2))
        return 0
    rows = [
        [
            m.name + (" (default)" if m.default else ""),
            "yes" if m.available else "no",
            m.backend,
            ", ".join(m.aliases),
            "" if m.available else (m.hint or ", ".join(m.missing)),
        ]
        for m in listing.models
    ]
    _table(["MODEL", "AVAILABLE", "BACKEND", "ALIASES", "TO USE IT"], rows)
    return 0


def cmd_languages(args: argparse.Namespace) -> int:
    with _client(args) as client:
        listing = client.list_languages()
    if args.json:
        print(listing.model_dump_json(indent=2))
        return 0
    rows = [[lang.name, lang.version or "", lang.path or ""] for lang in listing.languages]
    _table(["LANGUAGE", "VERSION", "PATH"], rows)
    if not rows:
        print("(no language is available on this server)", file=sys.stderr)
    return 0


# --- rendering --------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_output(result: dict[str, Any]) -> None:
    if isinstance(result.get("text"), str):
        print(result["text"])
        return
    for key, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        value = result.get(key)
        if isinstance(value, str) and value:
            out.write(value if value.endswith("\n") else value + "\n")
            out.flush()


def _print_status(status: MCPJobStatusResponse, out: TextIO) -> None:
    print(f"job       {status.job_id}  ({status.name}, {status.job_type})", file=out)
    print(
        f"status    {status.status}"
        + (f"  {status.progress}%" if status.progress is not None else ""),
        file=out,
    )
    if status.progress_message:
        print(f"progress  {status.progress_message}", file=out)
    if status.error:
        print(f"error     {status.error.type}: {status.error.message}", file=out)
    if status.result is not None:
        print(
            "result    " + json.dumps(status.result, indent=2).replace("\n", "\n          "),
            file=out,
        )


class ProgressBar:
    """One line on a terminal, redrawn in place; plain lines on changes when not a tty."""

    def __init__(self, out: TextIO, width: int = 30) -> None:
        self.out = out
        self.width = width
        self.tty = out.isatty()
        self.last = ""

    def show(self, status: str, progress: int | None, message: str | None) -> None:
        pct = progress or 0
        filled = self.width * pct // 100
        bar = "█" * filled + "░" * (self.width - filled)
        line = f"{status:<9} [{bar}] {pct:3d}%" + (f"  {message}" if message else "")
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.out.write("\r\x1b[2K" + line[: os.get_terminal_size(self.out.fileno()).columns])
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()


def _follow(
    client: DeepExecClient, job_id: str, *, live_output: bool, max_wait: float | None = None
) -> int:
    """Show a job's progress (and output, if ``live_output``) until it ends; print the result;
    exit 0 if it COMPLETED, 1 if FAILED, 3 if CANCELED."""
    bar = ProgressBar(sys.stderr)
    status_name = "PENDING"
    progress: int | None = None
    message: str | None = None
    final: MCPJobStatusResponse | None = None
    if max_wait is not None:
        final = client.wait_for_mcp_job_completion(
            job_id, poll_interval=1.0, max_wait_time=max_wait
        )
    else:
        for event in client.stream_mcp_job_events(job_id):
            if event.type == "status" and event.job is not None:
                status_name, progress = str(event.job.status), event.job.progress
                message = event.job.progress_message
                if event.job.is_terminal:
                    final = event.job
            elif event.type == "progress":
                progress, message = event.progress, event.message
            elif event.type == "output" and live_output and event.text:
                (sys.stderr if event.stream == "stderr" else sys.stdout).write(event.text)
                sys.stdout.flush()
                continue
            if not live_output:
                bar.show(status_name, progress, message)
        bar.done()
    if final is None:
        final = client.get_mcp_job_status(job_id)
    if not live_output and final.result is not None:
        _print_output(final.result)
    summary = f"{final.job_id} {final.status}"
    if final.error:
        summary += f": {final.error.type}: {final.error.message}"
    print(summary, file=sys.stderr)
    return EXIT_BY_STATUS.get(str(final.status), 1)


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepexec",
        description="DeepExec: sandboxed code execution and text generation as jobs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--database-url",
            help="sqlite:///path.db or postgresql://... "
            "(default: SQLite in the data dir; env DEEPEXEC_DATABASE_URL)",
        )

    def client_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            help="server URL (default: DEEPEXEC_BASE_URL, then the local "
            "credentials file, then http://127.0.0.1:8765)",
        )
        p.add_argument(
            "--api-key", help="API key (default: DEEPEXEC_API_KEY, then the local credentials file)"
        )

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

    p = sub.add_parser("worker", help="run jobs from a shared PostgreSQL store (no API)")
    server_opts(p)
    p.add_argument(
        "--concurrency", help="runner slots per job type, e.g. 'code_execution=4,text_generation=1'"
    )
    p.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="UNSAFE: run untrusted code without namespaces if the sandbox cannot work",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a job (code from a file or --code, or a prompt)")
    p.add_argument("file", nargs="?", help="program to run ('-' reads standard input)")
    p.add_argument("--code", "-c", help="program text to run")
    p.add_argument(
        "--language",
        "-l",
        help="one of the server's languages, as 'deepexec languages' lists them: "
        + ", ".join(lang.name for lang in LANGUAGES)
        + " where installed (default: from the file's suffix, else python)",
    )
    p.add_argument("--stdin-file", help="file whose contents the program reads on stdin")
    p.add_argument("--prompt", "-p", help="generate text from this prompt instead")
    p.add_argument("--model", "-m", help="model for --prompt (default: the embedded model)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--type", help="job type, with --data")
    p.add_argument("--data", help="job data as a JSON object, with --type")
    p.add_argument("--name", help="job name")
    p.add_argument("--timeout", type=int, default=60, help="seconds (default 60)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--tag", action="append", help="tag the job (repeatable)")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--wait",
        "-w",
        action="store_true",
        help="show progress until the job ends, then its result",
    )
    how.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="print output (or generated text) live until the job ends",
    )
    client_opts(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="show a job")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="print the full status as JSON")
    client_opts(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("wait", help="show a job's progress live, then its result")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    client_opts(p)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("cancel", help="cancel a pending or running job")
    p.add_argument("job_id")
    p.add_argument("--reason")
    client_opts(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("list", help="list jobs, newest first")
    p.add_argument("--status", choices=["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELED"])
    p.add_argument("--tag", action="append", help="only jobs with this tag (repeatable)")
    p.add_argument("--name")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    client_opts(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("logs", help="print a job's output")
    p.add_argument("job_id")
    p.add_argument("--follow", "-f", action="store_true", help="stream output live")
    client_opts(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("models", help="list the text generation models and what each needs")
    p.add_argument("--json", action="store_true")
    client_opts(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("languages", help="list the languages code jobs can use")
    p.add_argument("--json", action="store_true")
    client_opts(p)
    p.set_defaults(func=cmd_languages)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CliError, SettingsError) as exc:
        print(f"deepexec: error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"deepexec: {exc}", file=sys.stderr)
        return 124
    except DeepExecError as exc:
        print(f"deepexec: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
