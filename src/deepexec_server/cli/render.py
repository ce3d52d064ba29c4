"""How the CLI shows jobs: tables, a job's output and status, and a live progress bar."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from deepexec_sdk import DeepExecClient, MCPJobStatusResponse

EXIT_BY_STATUS = {"COMPLETED": 0, "FAILED": 1, "CANCELED": 3}


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for row in [list(headers), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_tests(tests: list[Any], summary: dict[str, Any]) -> None:
    """One line per test (its name or number, verdict, time), then the counts."""
    for index, test in enumerate(tests, 1):
        if isinstance(test, dict):
            ms = test.get("wall_time_ms")
            took = f"  {ms} ms" if ms is not None else ""
            print(f"test {test.get('name', index)}: {test.get('verdict')}{took}")
    print(f"passed {summary.get('passed')}/{summary.get('of', summary.get('total'))}")


def print_output(result: dict[str, Any]) -> None:
    if isinstance(result.get("text"), str):
        print(result["text"])
        return
    if isinstance(result.get("tests"), list) and isinstance(result.get("summary"), dict):
        print_tests(result["tests"], result["summary"])
        return
    for key, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        value = result.get(key)
        if isinstance(value, str) and value:
            out.write(value if value.endswith("\n") else value + "\n")
            out.flush()


def print_status(status: MCPJobStatusResponse, out: TextIO) -> None:
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


def follow(
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
        print_output(final.result)
    summary = f"{final.job_id} {final.status}"
    if final.error:
        summary += f": {final.error.type}: {final.error.message}"
    print(summary, file=sys.stderr)
    return EXIT_BY_STATUS.get(str(final.status), 1)
