"""Launching one prepared command line and supervising it to its end, its wall timeout, a
limit or its cancellation; always leaving no process of it behind (docs/sandbox.md, "The
process model" and "Stopping a run").

The server spawns the launcher with ``vfork`` (no ``preexec_fn``, unsafe in a threaded
server; no ``Popen(user=...)`` unless ``setpriv`` is missing, as CPython then forks the whole
server: ≈3 ms of the loop's time per run). The session comes from ``start_new_session``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable

from .capture import (
    READ_CHUNK,
    OutputSink,
    ProgressSink,
    StreamCapture,
    feed_stdin,
    open_pipe_reader,
    pump,
    pump_progress,
)
from .deathwatch import death_watch_env
from .identity import RunAs
from .reaping import kill, kill_run, parse_child_pid, read_available, reap_sandbox_init
from .result import RunResult, decode_exit, is_bwrap_failure

#: After the program ends or is killed, how long to wait for its pipes to reach EOF.
DRAIN_GRACE_S = 1.0
#: How often ``RunRequest.watch`` (the cgroup CPU-time and disk checks) is polled.
WATCH_INTERVAL_S = 0.1


@dataclasses.dataclass(frozen=True, slots=True)
class RunRequest:
    """Everything ``run_program`` needs to launch and supervise one program."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    stdin: bytes
    timeout: float
    max_output_bytes: int
    #: Set only when ``argv`` does not drop the uid itself: the spawn then does (a full fork).
    run_as: RunAs | None
    #: True when ``argv`` starts a bwrap sandbox (decides the kill and exit decoding).
    sandboxed: bool
    #: (read, write) ends of the progress pipe (``reaping.open_pipe``); the write end is
    #: inherited by the program under its own number (named in its environment).
    progress_pipe: tuple[int, int] | None = None
    #: (read, write) ends of the pipe given to ``bwrap --json-status-fd``.
    status_pipe: tuple[int, int] | None = None
    #: Further fds the launcher inherits (the seccomp filter pipe); closed here after spawn.
    inherit_fds: tuple[int, ...] = ()
    #: Called with the launcher's pid before it may run anything (``argv`` must then start
    #: with ``launcher_argv(..., gate=True)``): puts it into the job's cgroup.
    attach: Callable[[int], None] | None = None
    #: Last step of the ordered kill: kill whatever is left in the job's cgroup.
    kill_rest: Callable[[], None] | None = None
    #: Polled every ``WATCH_INTERVAL_S``: a limit name (``cpu_limit``) stops the run.
    watch: Callable[[], str | None] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Ending:
    """Why the server stopped a run (all False/None: it ended by itself)."""

    timed_out: bool = False
    canceled: bool = False
    limit_exceeded: str | None = None

    @property
    def killed(self) -> bool:
        return self.timed_out or self.canceled or self.limit_exceeded is not None


def _close_fds(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _close_process_transport(proc: asyncio.subprocess.Process) -> None:
    # asyncio.subprocess.Process has no public close(); without it pipes left open by a
    # killed-but-unreaped run would leak until garbage collection.
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


async def _spawn(req: RunRequest, read_fds: tuple[int | None, ...]) -> asyncio.subprocess.Process:
    """Start the launcher; the pipes' write ends and ``inherit_fds`` are closed here either
    way, the read ends too if the spawn fails."""
    progress_w = req.progress_pipe[1] if req.progress_pipe else None
    status_w = req.status_pipe[1] if req.status_pipe else None
    pass_fds = tuple(fd for fd in (progress_w, status_w) if fd is not None) + req.inherit_fds
    spawn_kwargs: dict[str, object] = {}
    if req.run_as is not None:
        spawn_kwargs.update(user=req.run_as.uid, group=req.run_as.gid, extra_groups=[])
    # The launcher and both bwraps keep the mark; the program does not (bwrap --clearenv).
    env = {**req.env, **death_watch_env()} if req.sandboxed else req.env
    try:
        return await asyncio.create_subprocess_exec(
            *req.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=req.cwd,
            pass_fds=pass_fds,
            start_new_session=True,
            limit=READ_CHUNK,
            **spawn_kwargs,  # type: ignore[arg-type]
        )
    except BaseException:
        _close_fds(*read_fds)
        raise
    finally:
        _close_fds(progress_w, status_w, *req.inherit_fds)


async def _attach(
    req: RunRequest, proc: asyncio.subprocess.Process, read_fds: tuple[int | None, ...]
) -> None:
    """``req.attach`` the launcher (held at its gate); on failure kill it and close the pipes."""
    assert req.attach is not None
    try:
        # Off the loop: the first cgroup.procs write after idle can block ~20 ms.
        await asyncio.to_thread(req.attach, proc.pid)
    except BaseException:
        kill(proc.pid, os.killpg)
        kill(proc.pid)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), DRAIN_GRACE_S)
        _close_process_transport(proc)
        _close_fds(*read_fds)
        raise


async def _supervise(
    req: RunRequest,
    proc: asyncio.subprocess.Process,
    exited: asyncio.Task[int],
    cancel: asyncio.Event,
    overflow: asyncio.Event,
    deadline: float,
) -> _Ending:
    """Wait for the run to exit; kill it first on cancel, output overflow, a limit ``watch``
    names, or the wall-clock ``deadline``."""
    canceled_wait = asyncio.create_task(cancel.wait())
    overflow_wait = asyncio.create_task(overflow.wait())
    try:
        while True:
            remaining = deadline - time.monotonic()
            step = remaining if req.watch is None else min(remaining, WATCH_INTERVAL_S)
            done, _ = await asyncio.wait(
                {exited, canceled_wait, overflow_wait},
                timeout=max(0.0, step),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited in done:
                return _Ending()
            if canceled_wait in done:
                ending = _Ending(canceled=True)
            elif overflow_wait in done:
                ending = _Ending(limit_exceeded="output_limit")
            elif req.watch is not None and (reason := req.watch()) is not None:
                ending = _Ending(limit_exceeded=reason)
            elif time.monotonic() >= deadline:
                ending = _Ending(timed_out=True)
            else:
                continue
            await kill_run(proc, req.sandboxed, req.kill_rest)
            return ending
    finally:
        canceled_wait.cancel()
        overflow_wait.cancel()


async def _clean_up(
    req: RunRequest,
    proc: asyncio.subprocess.Process,
    exited: asyncio.Task[int],
    tasks: list[asyncio.Task[None]],
    progress_transport: asyncio.BaseTransport | None,
    status_r: int | None,
) -> None:
    """Whatever happened: kill what still runs, stop the pumps, close every pipe, reap the
    sandbox init."""
    if proc.returncode is None:
        await kill_run(proc, req.sandboxed, req.kill_rest)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exited, DRAIN_GRACE_S)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, exited, return_exceptions=True)
    if progress_transport is not None:
        progress_transport.close()
    _close_process_transport(proc)
    if status_r is not None:
        init_pid = parse_child_pid(read_available(status_r))
        os.close(status_r)
        if init_pid is not None:
            await reap_sandbox_init(init_pid)


def _result(
    req: RunRequest,
    proc: asyncio.subprocess.Process,
    started: float,
    out_cap: StreamCapture,
    err_cap: StreamCapture,
    ending: _Ending,
) -> RunResult:
    returncode = proc.returncode if proc.returncode is not None else -signal.SIGKILL
    stderr_bytes = bytes(err_cap.data)
    exit_code, sig = decode_exit(returncode, req.sandboxed)
    if ending.killed and sig is None and exit_code is not None:
        # We killed it: report the kill, whatever status the launcher passed on.
        exit_code, sig = None, "SIGKILL"
    return RunResult(
        returncode=returncode,
        exit_code=exit_code,
        signal=sig,
        stdout=out_cap.text(),
        stderr=err_cap.text(),
        stdout_truncated=out_cap.truncated,
        stderr_truncated=err_cap.truncated,
        timed_out=ending.timed_out,
        canceled=ending.canceled,
        wall_time_ms=int((time.monotonic() - started) * 1000),
        sandbox_failed=req.sandboxed
        and not ending.killed
        and is_bwrap_failure(returncode, stderr_bytes),
        limit_exceeded=ending.limit_exceeded,
    )


async def run_program(
    req: RunRequest,
    cancel: asyncio.Event,
    on_output: OutputSink,
    on_progress: ProgressSink,
) -> RunResult:
    """Run ``req.argv`` to its end, its wall timeout, or ``cancel``; stream its output.

    Takes ownership of ``req.progress_pipe`` (both ends are closed here). Always leaves no
    process of the run behind when it returns.
    """
    progress_r = req.progress_pipe[0] if req.progress_pipe else None
    status_r = req.status_pipe[0] if req.status_pipe else None
    started = time.monotonic()
    proc = await _spawn(req, (progress_r, status_r))
    assert proc.stdout is not None and proc.stderr is not None
    stdin_data = req.stdin
    if req.attach is not None:
        await _attach(req, proc, (progress_r, status_r))
        # Opens the gate (see argv.LAUNCHER).
        stdin_data = b"\n" + stdin_data

    out_cap = StreamCapture(req.max_output_bytes)
    err_cap = StreamCapture(req.max_output_bytes)
    overflow = asyncio.Event()
    tasks: list[asyncio.Task[None]] = [
        asyncio.create_task(pump(proc.stdout, out_cap, "stdout", on_output, overflow)),
        asyncio.create_task(pump(proc.stderr, err_cap, "stderr", on_output, overflow)),
        asyncio.create_task(feed_stdin(proc, stdin_data)),
    ]
    progress_transport: asyncio.BaseTransport | None = None
    if progress_r is not None:
        reader, progress_transport = await open_pipe_reader(progress_r)
        tasks.append(asyncio.create_task(pump_progress(reader, on_progress)))

    exited = asyncio.create_task(proc.wait())
    try:
        ending = await _supervise(req, proc, exited, cancel, overflow, started + req.timeout)
        await exited
        # Pipes reach EOF once every process holding them is gone; in a sandbox that is as
        # soon as its init exits. Outside one, an escaped daemon may hold them: kill the group.
        _, pending = await asyncio.wait(tasks[:2], timeout=DRAIN_GRACE_S)
        if pending:
            await kill_run(proc, req.sandboxed, req.kill_rest)
            await asyncio.wait(tasks[:2], timeout=DRAIN_GRACE_S)
    finally:
        await _clean_up(req, proc, exited, tasks, progress_transport, status_r)
    return _result(req, proc, started, out_cap, err_cap, ending)
