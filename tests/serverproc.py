"""Run the real ``deepexec serve`` as a user would, on a free loopback port, in its own home.

Each ``ServerProcess`` gets private XDG directories, so its database, credentials file and API
key never touch the developer's own. ``env`` is what a user's shell on that machine would have:
scripts run with it find the server through the credentials file, with no configuration.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent
DEEPEXEC = str(VENV_BIN / "deepexec")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        nofile_soft: int | None = None,
    ) -> None:
        """``nofile_soft``: start the server with this soft open-file limit (the hard one
        unchanged), as on hosts whose default soft limit is 1024."""
        self.home = home
        self.nofile_soft = nofile_soft
        self.args = list(args)
        self.port = free_port()
        self.env = {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"),
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials_file(self) -> Path:
        return self.home / "config" / "deepexec" / "credentials.json"

    @property
    def api_key(self) -> str:
        return str(json.loads(self.credentials_file.read_text())["api_key"])

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [DEEPEXEC, "serve", "--port", str(self.port), *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._limit_files if self.nofile_soft is not None else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"deepexec serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.base_url}/readyz", timeout=1.0)
                if r.status_code == 200 and self.credentials_file.exists():
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"deepexec serve not ready after {timeout} s:\n{self.log()}")

    def _limit_files(self) -> None:
        assert self.nofile_soft is not None
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile_soft, hard))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def cli(
        self, *args: str, timeout: float = 60.0, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``deepexec ARGS`` as this server's user would."""
        res = subprocess.run(
            [DEEPEXEC, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"deepexec {' '.join(args)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def new_tenant_key(self, tenant: str) -> str:
        res = self.cli("keys", "create", "--tenant", tenant)
        return res.stdout.strip()
