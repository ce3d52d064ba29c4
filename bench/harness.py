"""What the benchmarks act with: a real ``deepexec serve`` in a private home, the sandbox layer
called directly (no server), a bare interpreter, and facts about this machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from deepexec_sdk import DeepExecAsyncClient
from deepexec_server.executors.code import CodeExecutor
from deepexec_server.settings import Settings

VENV_BIN = Path(sys.executable).parent
DEEPEXEC = str(VENV_BIN / "deepexec")
BARE_PYTHON = "/usr/bin/python3"
TRIVIAL = "print(1)"


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine_facts() -> dict[str, str]:
    """nproc, CPU model, kernel, load average, Python: what a reader needs to weigh figures."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
    }


class Server:
    """``deepexec serve`` on a free loopback port with a private HOME/XDG dirs (so its
    database, credentials and key never touch the user's), stopped by ``stop``."""

    def __init__(
        self, *args: str, database_url: str = "", env: dict[str, str] | None = None
    ) -> None:
        """``env``: settings (``DEEPEXEC_*``) beside the isolated home's variables."""
        self._tmp = tempfile.TemporaryDirectory(prefix="deepexec-bench-")
        self.home = Path(self._tmp.name)
        self.port = free_port()
        self.args = [*args, *(["--database-url", database_url] if database_url else [])]
        self.env = {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_DATA_HOME": str(self.home / "data"),
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The server's URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        """The local tenant's key, from the credentials file the server wrote."""
        path = self.home / "config" / "deepexec" / "credentials.json"
        return str(json.loads(path.read_text())["api_key"])

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Server:
        """Start and wait until /readyz answers and the credentials exist."""
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [DEEPEXEC, "serve", "--port", str(self.port), "--log-level", "warning", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        creds = self.home / "config" / "deepexec" / "credentials.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"deepexec serve exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200 and (
                    creds.exists()
                ):
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"deepexec serve not ready after {timeout} s: {self.log()}")

    def log(self) -> str:
        """The tail of the server's log."""
        with contextlib.suppress(OSError):
            return (self.home / "server.log").read_text(errors="replace")[-4000:]
        return ""

    def cli(self, *args: str) -> str:
        """``deepexec ARGS`` run as this server's operator would (its database); stdout."""
        res = subprocess.run(
            [DEEPEXEC, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise RuntimeError(f"deepexec {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res.stdout

    def tenant_key(self, tenant: str) -> str:
        """A new API key for ``tenant``, made as an operator would (``deepexec keys create``)."""
        return self.cli("keys", "create", "--tenant", tenant).strip()

    def client(self, timeout: float = 60.0) -> DeepExecAsyncClient:
        """An async SDK client for this server."""
        return DeepExecAsyncClient(self.base_url, self.api_key, timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL of its group if it lingers; remove its home."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._tmp.cleanup()


@contextlib.contextmanager
def running_server(
    *args: str, database_url: str = "", env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A started ``Server``, stopped on exit."""
    server = Server(*args, database_url=database_url, env=env)
    try:
        yield server.start()
    finally:
        server.stop()


class _Context:
    """The smallest ``ExecutionContext``: no progress or output consumers, never cancelled."""

    def __init__(self, job_id: str, timeout: float) -> None:
        self._job_id = job_id
        self._timeout = timeout
        self._cancel = asyncio.Event()

    @property
    def job_id(self) -> str:
        return self._job_id

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def cancel_requested(self) -> asyncio.Event:
        return self._cancel

    def report_progress(self, progress: int | None, message: str | None = None) -> None:
        pass

    def emit_output(self, stream: str, text: str) -> None:
        pass


class BareSandbox:
    """The server's own ``CodeExecutor`` called in this process: the same bwrap sandbox, work
    dir, rlimits and output capture as a job, without HTTP, store, queue or runner."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="deepexec-bench-sbx-")
        home = Path(self._tmp.name)
        self.executor = CodeExecutor(
            Settings(data_dir=home / "data", credentials_file=home / "creds.json")
        )
        self._n = 0

    async def start(self) -> BareSandbox:
        """Probe the host (as the server does at start)."""
        await self.executor.start()
        problem = self.executor.describe()["sandbox"]["problem"]
        if problem:
            raise RuntimeError(f"sandbox unavailable: {problem}")
        return self

    async def run(self, code: str = TRIVIAL) -> dict[str, Any]:
        """Run ``code`` as a python job would be run; return the job's result dict."""
        self._n += 1
        data = self.executor.validate({"code": code, "language": "python"}, 60)
        outcome = await self.executor.execute(data, _Context(f"bench-{self._n}", 60.0))
        if outcome.error is not None or outcome.result is None:
            raise RuntimeError(f"bare sandbox run failed: {outcome}")
        return outcome.result

    def close(self) -> None:
        """Remove the private dirs."""
        self._tmp.cleanup()


async def bare_python(code: str = TRIVIAL) -> bytes:
    """``/usr/bin/python3 -c CODE`` as a plain subprocess (no sandbox); its stdout."""
    proc = await asyncio.create_subprocess_exec(
        BARE_PYTHON, "-c", code, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bare python exited {proc.returncode}")
    return out


def have(tool: str) -> str | None:
    """Absolute path of ``tool`` on PATH, or None."""
    return shutil.which(tool)
