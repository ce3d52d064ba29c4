"""Ray Jobs peer for benchmark 7. Runs under bench/.venv-ray's Python (not the project's):
starts a local Ray head, then for every line on stdin submits ``python3 -c 'print(1)'`` as a
Ray Job, waits for it to end and prints one JSON line ``{"seconds", "status", "logs"}``. On
EOF it shuts down that Ray (only the processes it started). Standalone on purpose: it
must not import anything of DeepExec."""

from __future__ import annotations

import json
import os
import socket
import sys
import time


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    """Start Ray, serve stdin requests, stop Ray."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray  # type: ignore[import-not-found, unused-ignore]
    from ray.job_submission import (  # type: ignore[import-not-found, unused-ignore]
        JobStatus,
        JobSubmissionClient,
    )

    # ray.init starts a local cluster owned by this driver; ray.shutdown stops exactly it.
    ctx = ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        log_to_driver=False,
    )
    try:
        client = JobSubmissionClient(f"http://{ctx.dashboard_url}")
        print(json.dumps({"ready": True, "ray": ray.__version__}), flush=True)
        for _ in sys.stdin:
            t0 = time.perf_counter()
            job_id = client.submit_job(entrypoint="python3 -c 'print(1)'")
            while True:
                status = client.get_job_status(job_id)
                if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                    break
                time.sleep(0.01)
            seconds = time.perf_counter() - t0
            logs = client.get_job_logs(job_id)
            print(json.dumps({"seconds": seconds, "status": str(status), "logs": logs}), flush=True)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
