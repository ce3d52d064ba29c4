"""DeepExec's main job on its embedded defaults: start a real server, run a sandboxed code job
and a local text-generation job through the SDK, print their results, stop the server.

The server gets a private, throwaway home, so the demo never touches your own DeepExec data
and can run while another server is up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from deepexec_sdk import DeepExecClient, MCPJobStatusResponse

BIN = Path(sys.executable).parent

CODE = """\
import platform, os
print(f"Hello from {platform.python_implementation()} {platform.python_version()}")
print(f"running as uid {os.getuid()} in pid {os.getpid()}, host name {platform.node()!r}")
print("squares:", [n * n for n in range(8)])
"""

PROMPT = "Explain in two sentences why sandboxing untrusted code matters."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def show(title: str, status: MCPJobStatusResponse) -> None:
    took = ""
    if status.started_at and status.finished_at:
        took = f" in {(status.finished_at - status.started_at).total_seconds() * 1000:.0f} ms"
    print(f"\n── {title}: {status.status}{took} ({status.job_id})")
    if status.error:
        print(f"   error: {status.error.type}: {status.error.message}")
    result = status.result or {}
    if "stdout" in result:
        for line in str(result["stdout"]).splitlines():
            print(f"   │ {line}")
        if result.get("stderr"):
            print(f"   stderr: {result['stderr']!r}")
    if "text" in result:
        print(
            f"   model: {result.get('model')}, {result.get('usage')}, "
            f"{result.get('tokens_per_second', 0):.0f} tokens/s"
        )
        for line in str(result["text"]).strip().splitlines():
            print(f"   │ {line}")


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="deepexec-demo-"))
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
    }
    env.pop("DEEPEXEC_BASE_URL", None)
    env.pop("DEEPEXEC_API_KEY", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    server = subprocess.Popen(
        [str(BIN / "deepexec"), "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            if server.poll() is not None:
                print((home / "server.log").read_text(), file=sys.stderr)
                print("the server did not start; its log is above", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > 60:
                print("the server was not ready after 60 s", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(
            f"DeepExec server up at {base} in {time.monotonic() - t0:.1f} s "
            f"(log: {home / 'server.log'})"
        )
        key = (home / "config" / "deepexec" / "credentials.json").read_text()
        import json

        with DeepExecClient(base_url=base, api_key=json.loads(key)["api_key"]) as client:
            code = client.execute_code_and_wait(CODE, language="python", max_wait_time=60)
            show("sandboxed python job", code)
            text = client.generate_text_and_wait(
                PROMPT, max_tokens=80, temperature=0.2, seed=7, max_wait_time=120
            )
            show("local text-generation job", text)
        ok = code.status == "COMPLETED" and text.status == "COMPLETED"
        print("\nBoth jobs completed." if ok else "\nA job did not complete; see above.")
        return 0 if ok else 1
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
