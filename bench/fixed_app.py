"""Baselines for benchmark 4, served by uvicorn like ``deepexec serve``: a raw ASGI app and a
one-route FastAPI app, both answering every request with the fixed JSON body in
``$BENCH_FIXED_BODY`` (a real job status, so the bytes on the wire match)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

BODY = os.environ.get("BENCH_FIXED_BODY", '{"status": "COMPLETED"}').encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The smallest ASGI endpoint: a fixed 200 JSON answer (lifespan accepted)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


fastapi_app = FastAPI()


@fastapi_app.get("/v1/jobs/{job_id}")
async def status(job_id: str) -> Any:
    """The same fixed body through FastAPI routing (no auth, no store)."""
    return Response(BODY, media_type="application/json")
