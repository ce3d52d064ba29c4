"""An OpenAI-compatible API over DeepExec's text jobs, under ``/openai/v1``: ``GET /models``,
``GET /models/{id}``, ``POST /chat/completions`` and ``POST /completions``, streamed (server-sent
chunks ending with ``data: [DONE]``) or not.

Each request is one ``text_generation`` job of the key's tenant, tagged ``openai``: it queues,
shows in the job list and is limited like any other. A client that goes away while a job runs
cancels it. The key is DeepExec's (``Authorization: Bearer <key>``). Errors come in OpenAI's
shape with the status codes its clients map (400, 401, 404 for an unknown model, 429, 5xx), and
``x-should-retry: false`` where a retry cannot help. Fields this server has no use for are
ignored, as OpenAI's own servers ignore unknown ones.

The pure parts (request translation, response and chunk shapes) are separate from the thin
route handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from deepexec_sdk.types import JobStatus, JobSubmitRequest, MCPJobStatusResponse

from ..errors import DeepExecError, ServiceError
from ..views import job_status
from ..web.envelope import retry_after_value
from ..web.services import Services

PREFIX = "/openai/v1"
#: Tag on every job this API submits.
TAG = "openai"
#: OpenAI's message roles this server generates for; ``developer`` is the newer name of
#: ``system``.
ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: A failed job's ``error.type`` -> (HTTP status, OpenAI error type, whether a retry may help).
_FAILURES: Mapping[str, tuple[int, str, bool]] = {
    "context_length_exceeded": (400, "invalid_request_error", False),
    "timeout": (408, "timeout", True),
    "upstream_rate_limited": (429, "rate_limit_exceeded", True),
    "upstream_auth": (502, "upstream_error", False),
    "upstream_error": (502, "upstream_error", True),
    "upstream_timeout": (504, "upstream_error", True),
}


class OpenAIError(DeepExecError):
    """An answer in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.code, self.param, self.retry = code, param, retry
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        headers = {} if self.retry else {"x-should-retry": "false"}
        if self.retry_after is not None:
            headers["retry-after"] = retry_after_value(self.retry_after)
        body = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=headers)


def _content(value: Any, index: int) -> str:
    """A message's content: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    raise OpenAIError(
        400,
        f"messages[{index}].content must be a string or a list of text parts",
        param=f"messages[{index}].content",
    )


def _sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """The job data fields both endpoints share, from OpenAI's names."""
    data: dict[str, Any] = {}
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "you must provide a model parameter", param="model")
    data["model"] = model
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "stop", "seed"):
        if body.get(name) is not None:
            data[name] = body[name]
    n = body.get("n")
    if n is not None and n != 1:
        raise OpenAIError(400, "only n=1 is supported", param="n")
    return data


def chat_request(body: Any) -> JobSubmitRequest:
    """The text job a chat completion request describes."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "messages must be a non-empty array", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise OpenAIError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = ROLE_ALIASES.get(str(message.get("role")))
        if role is None:
            raise OpenAIError(
                400,
                f"messages[{i}].role must be one of {', '.join(ROLE_ALIASES)}",
                param=f"messages[{i}].role",
            )
        out.append({"role": role, "content": _content(message.get("content"), i)})
    data = {"messages": out, **_sampling(body)}
    return JobSubmitRequest(name="openai chat", job_type="text_generation", data=data, tags=[TAG])


def completion_request(body: Any) -> JobSubmitRequest:
    """The text job a (legacy) completion request describes."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise OpenAIError(400, "prompt must be a non-empty string", param="prompt")
    data = {"prompt": prompt, **_sampling(body)}
    return JobSubmitRequest(
        name="openai completion", job_type="text_generation", data=data, tags=[TAG]
    )


def failure(job: MCPJobStatusResponse) -> OpenAIError | None:
    """The error a job that did not complete is reported as, or None if it completed."""
    if job.status == JobStatus.COMPLETED:
        return None
    if job.status == JobStatus.CANCELED:
        return OpenAIError(499, "the request was cancelled", type="cancelled", code="cancelled")
    error = job.error
    kind = error.type if error else "internal_error"
    status, type_, retry = _FAILURES.get(kind, (500, "server_error", True))
    message = error.message if error else "the generation failed"
    return OpenAIError(status, message, type=type_, code=kind, retry=retry)


def usage(result: Mapping[str, Any]) -> dict[str, int]:
    raw = result.get("usage") or {}
    prompt = raw.get("prompt_tokens") or 0
    completion = raw.get("completion_tokens") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish(result: Mapping[str, Any]) -> str:
    return "length" if result.get("finish_reason") == "length" else "stop"


def completion_body(job: MCPJobStatusResponse, chat: bool) -> dict[str, Any]:
    """A completed job as OpenAI's answer."""
    result = job.result or {}
    text = str(result.get("text") or "")
    choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(result)}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
        choice["logprobs"] = None
    else:
        choice.update(text=text, logprobs=None)
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + job.job_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(job.created_at.timestamp()),
        "model": str(result.get("model") or ""),
        "choices": [choice],
        "usage": usage(result),
    }


class ChunkWriter:
    """The server-sent chunks of one streamed answer."""

    def __init__(self, job_id: str, created: int, model: str, chat: bool) -> None:
        self.id = ("chatcmpl-" if chat else "cmpl-") + job_id
        self.created, self.model, self.chat = created, model, chat
        self.sent = ""

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def _choice(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def opening(self) -> bytes:
        return self._chunk([self._choice("", None, first=True)])

    def text(self, piece: str) -> bytes:
        self.sent += piece
        return self._chunk([self._choice(piece, None)])

    def closing(self, job: MCPJobStatusResponse, include_usage: bool) -> bytes:
        """What is left to send once the job completed: any text not streamed yet (generated
        before the stream subscribed), the finish reason, the usage if asked, ``[DONE]``."""
        result = job.result or {}
        self.model = str(result.get("model") or self.model)
        full = str(result.get("text") or "")
        out = b""
        if full.startswith(self.sent) and len(full) > len(self.sent):
            out += self.text(full[len(self.sent) :])
        out += self._chunk([self._choice(None if self.chat else "", _finish(result))])
        if include_usage:
            out += self._chunk([], usage=usage(result))
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(err: OpenAIError) -> bytes:
        body = {"error": {"message": err.message, "type": err.type, "code": err.code}}
        return b"data: " + json.dumps(body).encode() + b"\n\n"


# --- routes (thin) ----------------------------------------------------------------------------


async def _tenant(request: Request, svc: Services) -> str:
    try:
        return await svc.auth.tenant_for(request.headers.get("authorization"))
    except ServiceError as exc:
        raise OpenAIError(401, exc.message, code="invalid_api_key") from exc


def _models(svc: Services) -> list[dict[str, Any]]:
    described = svc.engine.describe().get("text_generation") or {}
    return [
        {"id": m["name"], "object": "model", "created": 0, "owned_by": m.get("backend") or ""}
        for m in described.get("models") or ()
        if m.get("available")
    ]


async def list_models(request: Request) -> JSONResponse:
    """``GET /openai/v1/models``: the models usable now."""
    svc: Services = request.app.state.services
    try:
        await _tenant(request, svc)
    except OpenAIError as exc:
        return exc.response()
    return JSONResponse({"object": "list", "data": _models(svc)})


async def get_model(request: Request, model: str) -> JSONResponse:
    """``GET /openai/v1/models/{model}``."""
    svc: Services = request.app.state.services
    name = model
    try:
        await _tenant(request, svc)
        found = next((m for m in _models(svc) if m["id"] == name), None)
        if found is None:
            raise OpenAIError(404, f"the model {name!r} does not exist", code="model_not_found")
    except OpenAIError as exc:
        return exc.response()
    return JSONResponse(found)


async def _submit(svc: Services, tenant_id: str, req: JobSubmitRequest) -> MCPJobStatusResponse:
    try:
        job, _ = await svc.engine.submit(tenant_id, req)
    except ServiceError as exc:
        if exc.type == "model_unavailable":
            raise OpenAIError(404, exc.message, code="model_not_found", param="model") from exc
        status = 400 if exc.status_code == 422 else exc.status_code
        raise OpenAIError(
            status,
            exc.message,
            # A tenant's quota is OpenAI's rate limit: the client's RateLimitError.
            type="rate_limit_exceeded" if status == 429 else "invalid_request_error",
            code=exc.type,
            retry=status >= 429 and not exc.final,
            retry_after=exc.retry_after,
        ) from exc
    return job_status(job)


async def _cancel_quietly(svc: Services, tenant_id: str, job_id: str) -> None:
    with contextlib.suppress(ServiceError):
        await svc.engine.cancel(tenant_id, job_id, "the OpenAI client went away")


async def _answer(request: Request, chat: bool) -> JSONResponse | StreamingResponse:
    svc: Services = request.app.state.services
    try:
        tenant_id = await _tenant(request, svc)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise OpenAIError(400, "the request body must be JSON") from None
        req = chat_request(body) if chat else completion_request(body)
        req = req.model_copy(update={"timeout": svc.settings.default_timeout})
        job = await _submit(svc, tenant_id, req)
    except OpenAIError as exc:
        return exc.response()
    if body.get("stream"):
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return StreamingResponse(
            _stream(svc, tenant_id, job, str(body["model"]), chat, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        # No bound of its own: the job's timeout ends it, as it ends a /v1 waiter's wait.
        final = job_status(await svc.engine.wait(tenant_id, job.job_id, math.inf))
    except asyncio.CancelledError:
        await asyncio.shield(_cancel_quietly(svc, tenant_id, job.job_id))
        raise
    err = failure(final)
    if err is not None:
        return err.response()
    return JSONResponse(completion_body(final, chat))


async def _stream(
    svc: Services,
    tenant_id: str,
    job: MCPJobStatusResponse,
    model: str,
    chat: bool,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    writer = ChunkWriter(job.job_id, int(job.created_at.timestamp()), model, chat)
    finished = False
    try:
        yield writer.opening()
        async for shared in svc.engine.events(tenant_id, job.job_id):
            if shared is None:
                yield b": keep-alive\n\n"
                continue
            event = shared.event
            if event.type == "output" and event.stream == "text" and event.text:
                yield writer.text(event.text)
            elif event.type == "status" and event.job is not None and event.job.is_terminal:
                finished = True
                err = failure(event.job)
                yield (
                    writer.closing(event.job, include_usage)
                    if err is None
                    else (writer.error(err) + b"data: [DONE]\n\n")
                )
                return
    finally:
        if not finished:  # the client went away (or the server is stopping): stop the job
            await asyncio.shield(_cancel_quietly(svc, tenant_id, job.job_id))


async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
    """``POST /openai/v1/chat/completions``."""
    return await _answer(request, chat=True)


async def completions(request: Request) -> JSONResponse | StreamingResponse:
    """``POST /openai/v1/completions`` (the legacy text completion)."""
    return await _answer(request, chat=False)


def router() -> APIRouter:
    """The OpenAI-compatible routes."""
    api = APIRouter(prefix=PREFIX, tags=["OpenAI compatibility"])
    api.add_api_route("/models", list_models, methods=["GET"])
    api.add_api_route("/models/{model}", get_model, methods=["GET"])
    # The handlers return their responses themselves: no response model to generate.
    api.add_api_route("/chat/completions", chat_completions, methods=["POST"], response_model=None)
    api.add_api_route("/completions", completions, methods=["POST"], response_model=None)
    return api
