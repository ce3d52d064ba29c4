"""6. Embedded-model generation through DeepExec (submit → stream → result) against calling
xllamacpp directly in this process with the same model, parameters and request body."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from deepexec_sdk import DeepExecAsyncClient
from deepexec_server.executors.llm_backends import EmbeddedBackend, chat_payload
from deepexec_server.executors.models import ModelCatalog
from deepexec_server.executors.text import build_request, validate_text_data
from deepexec_server.settings import Settings

from .common import RunConfig
from .diagnose import healthz_ms, http_limit
from .harness import running_server
from .stats import SUMMARY_COLUMNS, Outcome, Summary, Table, Verdict, fmt, summary_row

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
DATA: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 96, "temperature": 0.0, "seed": 7}
QUICK_DATA: dict[str, Any] = {**DATA, "max_tokens": 8}


class Direct:
    """xllamacpp's in-process server built with EmbeddedBackend's own parameters."""

    def __init__(self, settings: Settings, data: dict[str, Any]) -> None:
        catalog = ModelCatalog.from_settings(settings)
        self.spec = catalog.resolve(None)
        backend = EmbeddedBackend(
            self.spec, threads=settings.llm_threads, parallel=settings.llm_parallel
        )
        import xllamacpp as xlc

        # The very parameters the server uses (n_ctx, threads, parallel, cache...).
        self.server: Any = xlc.Server(backend._build_params())
        self.payload = chat_payload(build_request(validate_text_data(data, catalog)), self.spec)

    def generate(self) -> dict[str, float]:
        """One streamed completion: ttft (ms), tokens/s (llama.cpp's timing), tokens, wall."""
        t0 = time.perf_counter()
        first: list[float] = []
        info: dict[str, Any] = {}
        lock = threading.Lock()

        def callback(chunk: Any) -> bool:
            with lock:
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content") and not first:
                        first.append(time.perf_counter())
                if chunk.get("timings"):
                    info["tps"] = chunk["timings"].get("predicted_per_second")
                if chunk.get("usage"):
                    info["tokens"] = chunk["usage"].get("completion_tokens")
            return False

        self.server.handle_chat_completions(self.payload, callback)
        wall = time.perf_counter() - t0
        return {
            "ttft_ms": (first[0] - t0) * 1000 if first else float("nan"),
            "tps": float(info.get("tps") or float("nan")),
            "tokens": float(info.get("tokens") or 0),
            "wall_s": wall,
        }


async def through_deepexec(client: DeepExecAsyncClient, data: dict[str, Any]) -> dict[str, float]:
    """Submit, follow the event stream; client-seen first token, server-reported figures."""
    t0 = time.perf_counter()
    job = await client.submit_mcp_job("bench-llm", "text_generation", data, timeout=300)
    first = float("nan")
    final = None
    async for event in client.stream_mcp_job_events(job.job_id):
        if event.type == "output" and event.text and first != first:  # NaN: not yet
            first = time.perf_counter()
        if event.type == "status" and event.job is not None and event.job.is_terminal:
            final = event.job
    wall = time.perf_counter() - t0
    if final is None or final.status != "COMPLETED" or final.result is None:
        raise RuntimeError(f"text job did not complete: {final}")
    r = final.result
    return {
        "ttft_ms": (first - t0) * 1000,
        "server_ttft_ms": float(r.get("time_to_first_token_ms") or float("nan")),
        "tps": float(r.get("tokens_per_second") or float("nan")),
        "tokens": float((r.get("usage") or {}).get("completion_tokens") or 0),
        "wall_s": wall,
    }


async def run(cfg: RunConfig) -> Outcome:
    """Alternate a DeepExec generation and a direct one, same prompt and settings."""
    out = Outcome(6, "Embedded-model generation: DeepExec vs xllamacpp directly", cfg.command(6))
    reps = cfg.n(16, 1)
    data = QUICK_DATA if cfg.quick else DATA
    direct = await asyncio.to_thread(Direct, Settings(), data)
    ours: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    with running_server() as server:
        async with server.client(timeout=300) as client:
            await through_deepexec(client, data)  # warm-up (waits for the model to load)
            await asyncio.to_thread(direct.generate)
            for i in range(reps):
                pair = [through_deepexec(client, data), asyncio.to_thread(direct.generate)]
                if i % 2:
                    pair.reverse()
                a = await pair[0]
                b = await pair[1]
                o, d = (b, a) if i % 2 else (a, b)
                ours.append(o)
                base.append(d)
            floor_ms = await asyncio.to_thread(healthz_ms, server.base_url)

    def col(rows: list[dict[str, float]], key: str) -> Summary:
        return Summary.of([r[key] for r in rows if r[key] == r[key]])

    t1 = Table("Tokens per second (llama.cpp's predicted_per_second)", SUMMARY_COLUMNS)
    tps_o, tps_d = col(ours, "tps"), col(base, "tps")
    t1.add(*summary_row("DeepExec text_generation job (result.tokens_per_second)", tps_o))
    t1.add(*summary_row("xllamacpp direct, same params", tps_d))
    t2 = Table("Time to first token (ms)", SUMMARY_COLUMNS)
    ttft_o, ttft_srv, ttft_d = (
        col(ours, "ttft_ms"),
        col(ours, "server_ttft_ms"),
        col(base, "ttft_ms"),
    )
    t2.add(*summary_row("DeepExec, seen by the client (submit → first output event)", ttft_o))
    t2.add(*summary_row("DeepExec, inside the server (result.time_to_first_token_ms)", ttft_srv))
    t2.add(*summary_row("xllamacpp direct (call → first content chunk)", ttft_d))
    t3 = Table("Wall time of one generation (s) and tokens", [*SUMMARY_COLUMNS, "tokens (median)"])
    t3.add(
        *summary_row("DeepExec submit → terminal status", col(ours, "wall_s")),
        col(ours, "tokens").median,
    )
    t3.add(*summary_row("xllamacpp direct", col(base, "wall_s")), col(base, "tokens").median)
    t3.notes.append(
        f"{reps} generations per path, alternating; prompt {PROMPT!r}, max_tokens "
        f"{data['max_tokens']}, temperature 0, seed 7; model {direct.spec.name}; "
        "both use EmbeddedBackend's parameters (threads=llm_threads, n_parallel=llm_parallel). "
        "The two llama.cpp instances are in different processes but never generate at once."
    )
    out.tables += [t1, t2, t3]
    r = tps_o.median / tps_d.median if tps_d.median else float("nan")
    later = ttft_o.median - ttft_d.median
    out.verdicts += [
        Verdict(
            "tokens/s ≥ 0.9× direct",
            r >= 0.9,
            f"{fmt(r)}× ({fmt(tps_o.median)} vs {fmt(tps_d.median)} tokens/s)",
            ""
            if r >= 0.9
            else "the server's event loop (token events, SSE to the client) "
            "and the bench's client share the 2 cores with llama.cpp's 2 threads",
        ),
        Verdict(
            "first token ≤ 20 ms later than direct (client-seen, including submit and stream)",
            later <= 20,
            f"{fmt(later)} ms later ({fmt(ttft_o.median)} vs {fmt(ttft_d.median)} ms); inside "
            f"the server {fmt(ttft_srv.median)} ms",
            ""
            if later <= 20
            else http_limit(
                floor_ms, "HTTP submit + queue claim + event-stream set-up before the first token"
            ),
        ),
    ]
    return out
