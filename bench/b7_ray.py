"""7. Peer: the same trivial job as a Ray Job (Ray's Job Submission API on a local Ray started
by the peer process), interleaved with DeepExec SDK jobs. Ray lives in its own venv,
``bench/.venv-ray`` (gitignored), made here if missing and PyPI answers quickly."""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

from .b1_trivial import sdk_job
from .common import RunConfig
from .harness import running_server
from .stats import SUMMARY_COLUMNS, Outcome, Summary, Table, Verdict, fmt, ratio, summary_row

HERE = Path(__file__).resolve().parent
RAY_VENV = HERE / ".venv-ray"
RAY_PY = RAY_VENV / "bin" / "python"
INSTALL_TIMEOUT_S = 600


def ensure_ray_venv(allow_install: bool) -> str | None:
    """None when Ray is usable in ``bench/.venv-ray``; else why not."""
    check = [str(RAY_PY), "-c", "import ray.job_submission"]
    if RAY_PY.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return None
    if not allow_install:
        return "bench/.venv-ray is missing and --quick does not install it"
    try:
        subprocess.run(["python3", "-m", "venv", str(RAY_VENV)], check=True, timeout=120)
        res = subprocess.run(
            [str(RAY_VENV / "bin" / "pip"), "install", "-q", "ray[default]"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not install ray: {exc}"
    if res.returncode != 0:
        return f"pip install ray[default] failed: {res.stderr.strip()[-300:]}"
    return None


async def run(cfg: RunConfig) -> Outcome:
    """Alternate one Ray Job and one DeepExec job, each submit → terminal status."""
    out = Outcome(7, "Peer: Ray Jobs vs DeepExec, trivial job", cfg.command(7))
    why = ensure_ray_venv(allow_install=not cfg.quick)
    if why:
        out.verdicts.append(Verdict("Ray Jobs peer comparison", None, "-", why))
        return out
    reps = cfg.n(15, 2)
    home = tempfile.TemporaryDirectory(prefix="deepexec-bench-ray-")
    # Its own HOME: Ray writes an auth token to ~/.ray.
    peer = await asyncio.create_subprocess_exec(
        str(RAY_PY), str(HERE / "ray_peer.py"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={"HOME": home.name, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )  # fmt: skip
    assert peer.stdin is not None and peer.stdout is not None
    ray_s: list[float] = []
    ours: list[float] = []
    version = "?"
    try:
        ready = json.loads(await asyncio.wait_for(peer.stdout.readline(), 240))
        version = ready.get("ray", "?")

        async def ray_job() -> float:
            assert peer.stdin is not None and peer.stdout is not None
            peer.stdin.write(b"go\n")
            await peer.stdin.drain()
            line = json.loads(await asyncio.wait_for(peer.stdout.readline(), 120))
            if line["status"] != "SUCCEEDED" or "\n1\n" not in "\n" + line["logs"]:
                raise RuntimeError(f"ray job failed: {line}")
            return float(line["seconds"])

        with running_server() as server:
            async with server.client() as client:
                await ray_job()  # warm-up
                await sdk_job(client)
                for i in range(reps):
                    for which in ("ray", "ours") if i % 2 == 0 else ("ours", "ray"):
                        if which == "ray":
                            ray_s.append(await ray_job())
                        else:
                            t0 = time.perf_counter()
                            await sdk_job(client)
                            ours.append(time.perf_counter() - t0)
    finally:
        peer.stdin.close()
        try:
            await asyncio.wait_for(peer.wait(), 120)
        except TimeoutError:
            peer.kill()
            await peer.wait()
        home.cleanup()
    s_ours, s_ray = Summary.of(ours), Summary.of(ray_s)
    table = Table("Submit → terminal status of `print(1)` (ms)", [*SUMMARY_COLUMNS, "× DeepExec"])
    table.add(*summary_row("DeepExec SDK (sandboxed)", s_ours, 1000), 1.0)
    table.add(
        *summary_row(
            f"Ray {version} Jobs (JobSubmissionClient, poll 10 ms; no sandbox)", s_ray, 1000
        ),
        ratio(s_ray.median, s_ours.median),
    )
    table.notes.append(
        f"{reps} jobs per system, alternating; Ray started by the peer with num_cpus=2 and its "
        f"dashboard (Job API) on loopback; Ray runs the entrypoint as a "
        "plain subprocess of a per-job supervisor actor."
    )
    out.tables.append(table)
    out.verdicts.append(
        Verdict(
            "DeepExec ≥ 10× faster end to end than a Ray Job",
            ratio(s_ray.median, s_ours.median) >= 10,
            f"Ray {fmt(ratio(s_ray.median, s_ours.median))}× DeepExec's median",
        )
    )
    return out
