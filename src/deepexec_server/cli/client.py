"""The client-side commands, through the SDK: ``submit``, ``status``, ``wait``, ``cancel``,
``list``, ``logs``, ``models`` (text generation models and what each needs), ``languages``
(code languages)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from deepexec_sdk import DeepExecClient
from deepexec_sdk.job_data import COMPARE_MODES

from ..executors.languages import LANGUAGES
from .common import CliError, client_opts
from .render import follow, print_output, print_status, table

if TYPE_CHECKING:
    from .common import Subparsers

M = TypeVar("M", bound=BaseModel)

#: A program file's language by its suffix: each language's own (``main.c`` -> c), and a few
#: other common ones.
LANGUAGE_BY_SUFFIX = {
    **{Path(lang.filename).suffix: lang.name for lang in LANGUAGES},
    ".mjs": "javascript",
    ".bash": "bash",
    ".cc": "cpp",
    ".cxx": "cpp",
}


def _client(args: argparse.Namespace) -> DeepExecClient:
    return DeepExecClient(base_url=args.url, api_key=args.api_key)


def load_tests(directory: str) -> list[dict[str, Any]]:
    """The test cases of a directory: each ``NAME.in`` is a test's stdin and the ``NAME.out``
    beside it (if any) its expected output; in order of NAME (numbers by value: 2 before 10)."""
    root = Path(directory)
    if not root.is_dir():
        raise CliError(f"--tests {directory}: not a directory")
    inputs = sorted(
        root.glob("*.in"),
        key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.stem),
    )
    if not inputs:
        raise CliError(f"--tests {directory}: no NAME.in files (each test is NAME.in, NAME.out)")
    tests = []
    for path in inputs:
        test: dict[str, Any] = {"name": path.stem, "stdin": path.read_text(encoding="utf-8")}
        out = path.with_suffix(".out")
        if out.is_file():
            test["expected_output"] = out.read_text(encoding="utf-8")
        tests.append(test)
    return tests


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
    if args.tests:
        data.update(tests=load_tests(args.tests), compare=args.compare)
        if args.stop_on_failure:
            data["stop_on_failure"] = True
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
            webhook_url=args.webhook_url,
        )
        if args.follow:
            return follow(client, job.job_id, live_output=True)
        if args.wait:
            return follow(client, job.job_id, live_output=False)
        print(job.job_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.get_mcp_job_status(args.job_id)
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        print_status(status, sys.stdout)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return follow(client, args.job_id, live_output=False, max_wait=args.timeout)


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
    table(["JOB", "STATUS", "TYPE", "PRI", "CREATED", "NAME"], rows)
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
    print_output(status.result)
    return 0


def _read(args: argparse.Namespace, fetch: Callable[[DeepExecClient], M]) -> M | None:
    """What ``fetch`` reads from the server; None once printed as JSON (``--json``)."""
    with _client(args) as client:
        found = fetch(client)
    if args.json:
        print(found.model_dump_json(indent=2))
        return None
    return found


def cmd_models(args: argparse.Namespace) -> int:
    listing = _read(args, lambda client: client.list_models())
    if listing is None:
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
    table(["MODEL", "AVAILABLE", "BACKEND", "ALIASES", "TO USE IT"], rows)
    return 0


def cmd_languages(args: argparse.Namespace) -> int:
    listing = _read(args, lambda client: client.list_languages())
    if listing is None:
        return 0
    rows = [[lang.name, lang.version or "", lang.path or ""] for lang in listing.languages]
    table(["LANGUAGE", "VERSION", "PATH"], rows)
    if not rows:
        print("(no language is available on this server)", file=sys.stderr)
    return 0


# --- parsers ------------------------------------------------------------------------------------


def add_parsers(sub: Subparsers) -> None:
    """The client-side commands."""
    _add_submit(sub)
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


def _add_submit(sub: Subparsers) -> None:
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
    p.add_argument(
        "--tests",
        metavar="DIR",
        help="run the program once per test: DIR holds NAME.in (stdin) and NAME.out (expected "
        "output) pairs; compiled once, a verdict per test",
    )
    p.add_argument(
        "--compare",
        choices=COMPARE_MODES,
        default="trailing_whitespace",
        help="with --tests: how outputs are compared (default trailing_whitespace)",
    )
    p.add_argument(
        "--stop-on-failure",
        action="store_true",
        help="with --tests: stop at the first failing test",
    )
    p.add_argument("--prompt", "-p", help="generate text from this prompt instead")
    p.add_argument("--model", "-m", help="model for --prompt (default: the embedded model)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--type", help="job type, with --data")
    p.add_argument("--data", help="job data as a JSON object, with --type")
    p.add_argument("--name", help="job name")
    p.add_argument("--timeout", type=int, default=60, help="seconds (default 60)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--tag", action="append", help="tag the job (repeatable)")
    p.add_argument("--webhook-url", help="POST the job's end here, signed (Standard Webhooks)")
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
