"""The Judge0 CE 1.13.1 API over DeepExec's code jobs, at Judge0's own paths.

``/submissions`` (create, with ``wait``; read; cancel with ``DELETE``; list), ``/submissions/
batch`` (create up to 20; read by ``tokens``), ``/languages``, ``/languages/all``,
``/languages/{id}``, ``/statuses``, ``/about``, ``/config_info``, ``/system_info``,
``/workers``, ``/authenticate``, ``/authorize``. Every submission is a job of the caller's
tenant (tagged ``judge0``): listed, cancelable and fair-shared like any other. The mapping
itself (pure) is ``judge0_model``.

The API key comes in ``X-Auth-Token`` (Judge0's authentication header) or ``X-Auth-User``,
either also as a query parameter, or in ``Authorization: Bearer``; a missing or unknown key is
Judge0's 401 with an empty body. Judge0 itself has no tenants, so an operator may name one for
keyless requests (``DEEPEXEC_JUDGE0_TENANT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..domain import JobFilter
from ..errors import ServiceError, Unauthorized
from ..views import job_status
from ..web.envelope import retry_headers
from ..web.services import Services
from . import judge0_info as info
from . import judge0_model as j0

#: How long ``wait=true`` waits beyond the job's own time limit (it may queue behind others).
QUEUE_WAIT_S = 300.0
#: Judge0's authentication and authorization headers (also accepted as query parameters).
AUTH_HEADERS = ("X-Auth-Token", "X-Auth-User")
MAX_PER_PAGE = 100


def _answer(status: int, body: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() == "true"


async def _tenant(request: Request, svc: Services) -> str:
    for name in AUTH_HEADERS:
        key = request.headers.get(name) or request.query_params.get(name)
        if key:
            return await svc.auth.tenant_for(f"Bearer {key.strip()}")
    header = request.headers.get("authorization")
    if not header and svc.settings.judge0_tenant:
        return svc.settings.judge0_tenant
    return await svc.auth.tenant_for(header)


def _languages(svc: Services) -> list[info.Language]:
    described = svc.engine.describe().get("code_execution") or {}
    return info.language_table(described.get("languages") or [])


def _maxima(svc: Services) -> info.ServerMaxima:
    limits = svc.settings.code_limits_max
    return info.ServerMaxima(
        cpu_time_s=limits["cpu_time_s"],
        wall_time_s=svc.settings.max_timeout,
        memory_kb=limits["memory_mb"] * 1024,
        processes=limits["max_processes"],
        file_size_kb=limits["max_file_size_mb"] * 1024,
    )


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise j0.Judge0Error(400, "the request body must be JSON") from None


async def _read(
    svc: Services, tenant: str, token: str, fields: list[str], encoded: bool
) -> dict[str, Any] | None:
    try:
        job = await svc.engine.get(tenant, token)
    except ServiceError:
        return None
    if info.TAG not in job.tags:
        return None
    return j0.submission(job_status(job), job.data, _languages(svc), fields, encoded=encoded)


class _Routes:
    """The handlers; each answers in Judge0's shapes."""

    @staticmethod
    def svc(request: Request) -> Services:
        services: Services = request.app.state.services
        return services

    async def create(self, request: Request) -> Response:
        svc = self.svc(request)
        encoded = _flag(request, "base64_encoded")
        fields = j0.parse_fields(request.query_params.get("fields"))
        tenant = await _tenant(request, svc)
        job_request = j0.submission_request(
            await _body(request), _languages(svc), _maxima(svc), encoded=encoded
        )
        job, _ = await svc.engine.submit(tenant, job_request, webhook_format=j0.JUDGE0_WEBHOOK)
        if not _flag(request, "wait"):
            return _answer(201, {"token": job.id})
        job = await svc.engine.wait(tenant, job.id, job.timeout + QUEUE_WAIT_S)
        out = j0.submission(job_status(job), job.data, _languages(svc), fields, encoded=encoded)
        return _answer(201, out)

    async def read(self, request: Request, token: str) -> Response:
        svc = self.svc(request)
        tenant = await _tenant(request, svc)
        fields = j0.parse_fields(request.query_params.get("fields"))
        found = await _read(svc, tenant, token, fields, _flag(request, "base64_encoded"))
        if found is None:
            return _answer(404, {"error": f"submission {token} not found"})
        return _answer(200, found)

    async def cancel(self, request: Request, token: str) -> Response:
        """Judge0 deletes a finished submission; DeepExec keeps its jobs and cancels an
        unfinished one instead (Judge0 cannot stop a running submission). Always base64."""
        svc = self.svc(request)
        tenant = await _tenant(request, svc)
        fields = j0.parse_fields(request.query_params.get("fields"))
        before = await _read(svc, tenant, token, ["status"], False)
        if before is None:
            return _answer(404, {"error": f"submission {token} not found"})
        if before["status"]["id"] in (1, 2):
            with contextlib.suppress(ServiceError):  # it may have ended meanwhile
                await svc.engine.cancel(tenant, token, "cancelled through the Judge0 API")
        return _answer(200, await _read(svc, tenant, token, fields, True))

    async def listing(self, request: Request) -> Response:
        svc = self.svc(request)
        tenant = await _tenant(request, svc)
        encoded = _flag(request, "base64_encoded")
        fields = j0.parse_fields(request.query_params.get("fields"))
        try:
            page = max(1, int(request.query_params.get("page") or 1))
            per_page = min(MAX_PER_PAGE, max(1, int(request.query_params.get("per_page") or 20)))
        except ValueError:
            raise j0.Judge0Error(400, "page and per_page must be whole numbers") from None
        cursor: str | None = None
        jobs: list[Any] = []
        for _ in range(page):
            jobs, cursor = await svc.engine.list_jobs(
                tenant, JobFilter(tags=(info.TAG,)), per_page, cursor
            )
            if cursor is None:
                break
        full = await asyncio.gather(*(svc.engine.get(tenant, j.id) for j in jobs))
        langs = _languages(svc)
        return _answer(
            200,
            {
                "submissions": [
                    j0.submission(job_status(j), j.data, langs, fields, encoded=encoded)
                    for j in full
                ],
                "meta": {
                    "current_page": page,
                    "next_page": page + 1 if cursor else None,
                    "prev_page": page - 1 if page > 1 else None,
                    "total_pages": None,
                    "total_count": None,
                },
            },
        )

    async def create_batch(self, request: Request) -> Response:
        svc = self.svc(request)
        encoded = _flag(request, "base64_encoded")
        tenant = await _tenant(request, svc)
        body = await _body(request)
        items = body.get("submissions") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise j0.Judge0Error(400, "submissions must be a non-empty array")
        if len(items) > info.MAX_BATCH:
            raise j0.Judge0Error(
                400, f"number of submissions in a batch cannot exceed {info.MAX_BATCH}"
            )
        langs, maxima = _languages(svc), _maxima(svc)
        out: list[dict[str, Any]] = []
        for item in items:
            try:
                job_request = j0.submission_request(item, langs, maxima, encoded=encoded)
                job, _ = await svc.engine.submit(
                    tenant, job_request, webhook_format=j0.JUDGE0_WEBHOOK
                )
                out.append({"token": job.id})
            except j0.Judge0Error as exc:
                out.append(exc.body())
            except ServiceError as exc:
                out.append({"error": exc.message})
        any_valid = any("token" in item for item in out)
        return _answer(201 if any_valid else 422, out)

    async def read_batch(self, request: Request) -> Response:
        svc = self.svc(request)
        tenant = await _tenant(request, svc)
        raw = request.query_params.get("tokens") or request.headers.get("tokens") or ""
        tokens = [t.strip() for t in raw.split(",") if t.strip()]
        if not tokens:
            raise j0.Judge0Error(400, "tokens are required")
        if len(tokens) > info.MAX_BATCH:
            raise j0.Judge0Error(400, f"number of tokens cannot exceed {info.MAX_BATCH}")
        fields = j0.parse_fields(request.query_params.get("fields"))
        encoded = _flag(request, "base64_encoded")
        found = await asyncio.gather(*(_read(svc, tenant, t, fields, encoded) for t in tokens))
        return _answer(200, {"submissions": list(found)})

    async def languages(self, request: Request) -> Response:
        svc = self.svc(request)
        await _tenant(request, svc)
        return _answer(200, [lang.row() for lang in _languages(svc)])

    async def languages_all(self, request: Request) -> Response:
        svc = self.svc(request)
        await _tenant(request, svc)
        rows = [{**lang.row(), "is_archived": False} for lang in _languages(svc)]
        return _answer(200, rows)

    async def language(self, request: Request, language_id: str) -> Response:
        svc = self.svc(request)
        await _tenant(request, svc)
        lang = next((lang for lang in _languages(svc) if str(lang.id) == language_id), None)
        if lang is None:
            return _answer(404, {"error": f"language with id {language_id} doesn't exist"})
        return _answer(200, lang.row(full=True))

    async def statuses(self, request: Request) -> Response:
        await _tenant(request, self.svc(request))
        return _answer(200, [{"id": i, "description": d} for i, d in info.STATUSES])

    async def about(self, request: Request) -> Response:
        return _answer(200, info.about())

    async def config_info(self, request: Request) -> Response:
        svc = self.svc(request)
        await _tenant(request, svc)
        settings = svc.settings
        tries = 1 + len(settings.webhook_retry_schedule)
        timeout = settings.webhook_timeout_seconds
        queue = settings.max_pending_jobs or info.NO_QUEUE_CAP
        return _answer(200, info.config_info(_maxima(svc), tries, timeout, queue))

    async def system_info(self, request: Request) -> Response:
        svc = self.svc(request)
        await _tenant(request, svc)
        return _answer(200, {"deepexec": svc.engine.describe().get("code_execution", {})})

    async def workers(self, request: Request) -> Response:
        svc = self.svc(request)
        await _tenant(request, svc)
        slots = svc.settings.concurrency.get("code_execution", 1)
        row = {"queue": "code_execution", "size": None, "available": slots, "idle": None,
               "working": None, "paused": 0, "failed": 0}  # fmt: skip
        return _answer(200, [row])

    async def authenticate(self, request: Request) -> Response:
        await _tenant(request, self.svc(request))
        return Response(status_code=200)


def _judge0_shapes(
    handler: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Errors in Judge0's shapes: its field hash or ``{"error"}``, and a 401 without a body.
    (The handler's own signature, path parameters included, is what the API schema shows.)"""

    @functools.wraps(handler)
    async def answer(request: Request, **path: str) -> Response:
        try:
            return await handler(request, **path)
        except j0.Judge0Error as exc:
            return _answer(exc.status, exc.body())
        except Unauthorized:
            return Response(status_code=401)
        except ServiceError as exc:
            if exc.type == "invalid_webhook_url":  # the callback_url: Judge0's field hash
                return _answer(422, {"callback_url": [exc.details[0]["msg"]]})
            wait = {k.decode(): v.decode() for k, v in retry_headers(exc)}
            if exc.type == "queue_full":  # Judge0's own words for it
                return _answer(503, {"error": "queue is full"}, wait)
            return _answer(exc.status_code, {"error": exc.message}, wait)

    return answer


def router() -> APIRouter:
    """Judge0's routes. ``/submissions/batch`` comes before ``/submissions/{token}``."""
    r = _Routes()
    api = APIRouter(tags=["Judge0 CE compatibility"])
    routes: list[tuple[str, Any, str]] = [
        ("/submissions/batch", r.create_batch, "POST"),
        ("/submissions/batch", r.read_batch, "GET"),
        ("/submissions", r.create, "POST"),
        ("/submissions", r.listing, "GET"),
        ("/submissions/{token}", r.read, "GET"),
        ("/submissions/{token}", r.cancel, "DELETE"),
        ("/languages", r.languages, "GET"),
        ("/languages/all", r.languages_all, "GET"),
        ("/languages/{language_id}", r.language, "GET"),
        ("/statuses", r.statuses, "GET"),
        ("/about", r.about, "GET"),
        ("/config_info", r.config_info, "GET"),
        ("/system_info", r.system_info, "GET"),
        ("/workers", r.workers, "GET"),
        ("/authenticate", r.authenticate, "POST"),
        ("/authorize", r.authenticate, "POST"),
    ]
    for path, endpoint, method in routes:
        api.add_api_route(path, _judge0_shapes(endpoint), methods=[method], response_model=None)
    return api
