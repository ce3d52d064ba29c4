"""9. Where the server's time goes: py-spy samples ``deepexec serve`` while it runs benchmark
1's trivial jobs, while it answers benchmark 4's status load, and while it takes benchmark 5's
queued submits. py-spy lives in
``bench/.venv-tools`` (gitignored), installed here if missing."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

from .b1_trivial import sdk_job
from .b5_backlog import BLOCKER, SLOTS
from .common import RunConfig
from .harness import TRIVIAL, running_server
from .load import load, post_load
from .stats import Outcome, Table, Verdict

HERE = Path(__file__).resolve().parent
TOOLS = HERE / ".venv-tools"
PY_SPY = TOOLS / "bin" / "py-spy"

#: (category, pattern on a frame): the leaf-most frame that matches decides a sample's
#: category, so time in hashlib under auth.py counts as "auth", sqlite3 under the store "store".
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("auth (key check)", re.compile(r"deepexec_server/auth|hashlib|hmac|scrypt|pbkdf2")),
    ("store (SQL)", re.compile(r"deepexec_server/store|sqlite3|psycopg")),
    ("sandbox (run_program, bwrap)", re.compile(r"deepexec_server/executors")),
    ("spawn (fork/exec, pipes)", re.compile(r"subprocess\.py|unix_events|_posixsubprocess")),
    ("serialisation (pydantic, json)", re.compile(r"pydantic|/json/|orjson")),
    ("metrics (prometheus)", re.compile(r"prometheus_client|deepexec_server/metrics")),
    ("engine (queue, runners)", re.compile(r"deepexec_server/engine")),
    ("API (routes, middleware)", re.compile(r"deepexec_server/(api|app|views|errors)")),
    ("HTTP + ASGI framework", re.compile(r"uvicorn|starlette|fastapi|h11|httptools|anyio")),
    ("event loop", re.compile(r"asyncio/")),
]


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy's ``--format raw`` (collapsed stacks): ``root;...;leaf COUNT`` per line."""
    out: list[tuple[list[str], int]] = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def categorise(frames: list[str]) -> str:
    """The category of one sample: the leaf-most frame that matches one."""
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return "other"


def _short(frame: str) -> str:
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    path = re.sub(r".*/(site-packages|lib/python3\.\d+|src)/", "", path)
    return f"{func} ({path})"


def summarise(stacks: list[tuple[list[str], int]], top: int = 12) -> tuple[Table, Table]:
    """(share by category, top functions by self time) of the samples."""
    total = sum(n for _, n in stacks) or 1
    cats: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        cats[categorise(frames)] += n
        leaf[_short(frames[-1])] += n
    t1 = Table("Server CPU samples by subsystem", ["subsystem", "samples", "share %"])
    for name, n in cats.most_common():
        t1.add(name, n, 100.0 * n / total)
    t2 = Table("Top functions by own (self) samples", ["function", "samples", "share %"])
    for name, n in leaf.most_common(top):
        t2.add(name.replace("|", "/"), n, 100.0 * n / total)
    return t1, t2


def ensure_py_spy(allow_install: bool) -> str | None:
    """None when py-spy is usable; else why not."""
    if PY_SPY.exists():
        return None
    if not allow_install:
        return "bench/.venv-tools is missing and --quick does not install py-spy"
    try:
        subprocess.run(["python3", "-m", "venv", str(TOOLS)], check=True, timeout=120)
        res = subprocess.run(
            [str(TOOLS / "bin" / "pip"), "install", "-q", "py-spy"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install py-spy: {exc}"
    return None if res.returncode == 0 else f"pip install py-spy failed: {res.stderr[-300:]}"


async def _sample(pid: int, seconds: float, out_file: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
        "--rate", "250", "--format", "raw", "--output", str(out_file), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def run(cfg: RunConfig) -> Outcome:
    """Profile the server under benchmark 1's loop, then under benchmark 4's load."""
    out = Outcome(9, "Profile of the hot paths (py-spy on deepexec serve)", cfg.command(9))
    why = ensure_py_spy(allow_install=not cfg.quick)
    if why:
        out.verdicts.append(Verdict("profile", None, "-", why))
        return out
    seconds = cfg.secs(12, 2)
    with tempfile.TemporaryDirectory(prefix="deepexec-bench-prof-") as tmp, running_server() as srv:
        async with srv.client() as client:
            for _ in range(3):
                await sdk_job(client)
            trivial = Path(tmp) / "trivial.txt"
            spy = await _sample(srv.pid, seconds, trivial)
            jobs = 0
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                await sdk_job(client)
                jobs += 1
            await spy.wait()
            job = await client.submit_mcp_job("bench", "code_execution", {"code": TRIVIAL})
            await client.wait_for_mcp_job_completion(job.job_id, max_wait_time=60)
        status = Path(tmp) / "status.txt"
        spy = await _sample(srv.pid, seconds, status)
        auth = {"Authorization": f"Bearer {srv.api_key}"}
        url = f"{srv.base_url}/v1/jobs/{job.job_id}"
        httpx.get(url, headers=auth).raise_for_status()
        res = await asyncio.to_thread(load, url, auth, seconds - 1)
        await spy.wait()
        async with srv.client() as client:
            for _ in range(SLOTS):  # hold the code slots: every submit below only queues
                await client.submit_mcp_job("blocker", "code_execution", {"code": BLOCKER}, 3600)
            submits_file = Path(tmp) / "submits.txt"
            spy = await _sample(srv.pid, seconds, submits_file)
            job_body = {"name": "q", "job_type": "code_execution", "data": {"code": TRIVIAL}}
            body = json.dumps(job_body)
            headers = {**auth, "Content-Type": "application/json"}
            # Benchmark 5's lean load process, sized to outlast the sampling.
            posted = await asyncio.to_thread(
                post_load, f"{srv.base_url}/v1/jobs", headers, body.encode(), cfg.n(15_000, 300)
            )
            await spy.wait()
            submitted_rate = posted.rate
        scenarios = [
            (trivial, f"benchmark 1 loop ({jobs} jobs)"),
            (status, f"benchmark 4 status load ({res.rps:.0f} req/s)"),
            (submits_file, f"benchmark 5 queued submits ({submitted_rate:.0f}/s)"),
        ]
        for path, label in scenarios:
            stacks = parse_collapsed(path.read_text().splitlines()) if path.exists() else []
            t1, t2 = summarise(stacks)
            t1.title += f" — {label}"
            t2.title += f" — {label}"
            t1.notes.append(
                f"{sum(n for _, n in stacks)} samples at 250 Hz over {seconds:g} s of the "
                "server's active threads (idle excluded); a sample's subsystem is its "
                "leaf-most frame that matches one."
            )
            out.tables += [t1, t2]
    return out
