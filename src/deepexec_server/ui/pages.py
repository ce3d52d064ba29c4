"""The dashboard's pages: server-rendered HTML (Jinja2), made live with htmx.

- ``/ui/login``, ``/ui/logout``: sign in with an API key, sign out.
- ``/ui/jobs``: the tenant's jobs, newest first, filtered by status, type, tag and name (the
  filters live in the URL); the first page refreshes itself every two seconds; search by id;
  tick unfinished jobs and cancel them together (``POST /ui/jobs/cancel``).
- ``/ui/jobs/{id}``: a job: status, progress, live output over server-sent events (the page
  keeps the latest 256 KiB of it, ``static/app.js``), the request (code highlighted), the result
  or error; cancel, run again, download the output.
- ``/ui/submit``: run code or generate text; lands on the new job's page.

Every page acts through the same engine calls as ``/v1``, for the signed-in key's tenant only:
another tenant's job is a 404 page. See ``session`` for the cookie and cross-site checks.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from deepexec_sdk.types import JobSubmitRequest, MCPJobStatusResponse, MCPJobSummary

from ..auth import hash_key
from ..errors import DeepExecError, ServiceError
from ..views import job_list_item, job_status
from ..web.services import Services
from .forms import (
    JOB_TYPES,
    LIST_FILTERS,
    STATUSES,
    bulk_notice,
    list_query,
    read_form,
    read_form_lists,
    submit_request,
)
from .session import COOKIE, CSRF_FIELD, CSRF_HEADER, MAX_AGE_S, Sessions, same_origin

logger = logging.getLogger("deepexec_server.ui")

HERE = Path(__file__).parent
PAGE_SIZE = 50


class SignInRequired(DeepExecError):
    """No valid session: pages redirect to the sign-in form, fragments answer 401."""


class CrossSiteRequest(DeepExecError):
    """A state-changing request from another origin or without the session's token: 403."""


def _age(when: datetime | None) -> str:
    if when is None:
        return ""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(job: MCPJobSummary) -> str:
    if job.started_at is None:
        return ""
    end = job.finished_at or datetime.now(UTC)
    return f"{(end - job.started_at).total_seconds():.2f} s"


def sse_event(name: str, fragment: str) -> bytes:
    """One server-sent event carrying an HTML fragment (each line its own ``data:``)."""
    lines = fragment.split("\n")
    return (f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def output_span(stream: str, text: str) -> str:
    return f'<span class="{html.escape(stream)}">{html.escape(text)}</span>'


class Dashboard:
    """The dashboard's routes, bound to one server's services and session secret."""

    def __init__(self, services: Services, sessions: Sessions) -> None:
        self.svc = services
        self.sessions = sessions
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals.update(age=_age, duration=_duration, statuses=STATUSES)

    # -- sessions --

    async def tenant(self, request: Request) -> str:
        if not self.svc.auth.enabled:
            return await self.svc.auth.tenant_for(None)
        digest = self.sessions.key_hash(request.cookies.get(COOKIE))
        if digest is None:
            raise SignInRequired
        tenant = await self.svc.auth.tenant_for_digest(digest)
        if tenant is None:
            raise SignInRequired
        return tenant

    async def action(self, request: Request) -> tuple[str, dict[str, str]]:
        """The tenant and form of a state-changing request that passed ``check_post``."""
        tenant = await self.tenant(request)
        form = await read_form(request)
        if not self.check_post(request, form):
            raise CrossSiteRequest
        return tenant, form

    def check_post(self, request: Request, form: Mapping[str, str]) -> bool:
        """A state-changing request: same origin and the session's token."""
        cookie = request.cookies.get(COOKIE, "")
        origin_ok = same_origin(
            request.headers.get("origin"), request.headers.get("host"), request.url.scheme
        )
        token = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
        return origin_ok and bool(cookie) and self.sessions.csrf_ok(cookie, token)

    def render(
        self, request: Request, name: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        cookie = request.cookies.get(COOKIE)
        context.setdefault("csrf", self.sessions.csrf_token(cookie) if cookie else "")
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    # -- sign in and out --

    async def login_form(self, request: Request) -> HTMLResponse:
        return self.render(request, "login.html", error=None)

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        origin_ok = same_origin(
            request.headers.get("origin"), request.headers.get("host"), request.url.scheme
        )
        key = form.get("api_key", "").strip()
        digest = hash_key(key) if key else ""
        tenant = await self.svc.auth.tenant_for_digest(digest) if digest and origin_ok else None
        if tenant is None:
            return self.render(
                request, "login.html", status=401, error="That key is unknown or revoked."
            )
        response = RedirectResponse("/ui/jobs", status_code=303)
        response.set_cookie(
            COOKIE,
            self.sessions.issue(digest),
            max_age=MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/ui",
        )
        return response

    async def logout(self, request: Request) -> Response:
        form = await read_form(request)
        if not self.check_post(request, form):
            return HTMLResponse("cross-site request refused", status_code=403)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # -- jobs --

    async def jobs(self, request: Request) -> Response:
        tenant = await self.tenant(request)
        params = dict(request.query_params)
        wanted = params.get("id", "").strip()
        if wanted:
            # Search by id: straight to the job's page (a 404 page if it is not the tenant's).
            return RedirectResponse(f"/ui/jobs/{quote(wanted, safe='')}", status_code=303)
        rows, next_cursor, kept = await self._page(tenant, params)
        return self.render(
            request,
            "jobs.html",
            jobs=rows,
            next_cursor=next_cursor,
            filters=kept,
            query=urlencode(kept),
            live=not params.get("cursor"),
            job_types=JOB_TYPES,
            notice=bulk_notice(params),
        )

    async def job_rows(self, request: Request) -> HTMLResponse:
        tenant = await self.tenant(request)
        rows, _, kept = await self._page(tenant, dict(request.query_params))
        return self.render(request, "_rows.html", jobs=rows, query=urlencode(kept), live=True)

    async def _page(
        self, tenant: str, params: Mapping[str, str]
    ) -> tuple[list[MCPJobSummary], str | None, dict[str, str]]:
        flt, kept = list_query(params)
        wanted_type = params.get("type")
        try:
            jobs, next_cursor = await self.svc.engine.list_jobs(
                tenant, flt, PAGE_SIZE, params.get("cursor") or None
            )
        except ServiceError:
            jobs, next_cursor = [], None
        rows = [job_list_item(j) for j in jobs if not wanted_type or j.job_type == wanted_type]
        return rows, next_cursor, kept

    async def job(self, request: Request) -> HTMLResponse:
        tenant = await self.tenant(request)
        job_id = request.path_params["job_id"]
        try:
            found = await self.svc.engine.get(tenant, job_id)
        except ServiceError:
            return self.render(request, "not_found.html", status=404, job_id=job_id)
        return self.render(
            request,
            "job.html",
            job=job_status(found),
            request_data=json.dumps(found.data, indent=2, ensure_ascii=False),
            code=found.data.get("code") if isinstance(found.data, dict) else None,
            language=found.data.get("language") if isinstance(found.data, dict) else None,
        )

    async def job_stream(self, request: Request) -> Response:
        tenant = await self.tenant(request)
        events = self._stream(request, tenant, request.path_params["job_id"])
        try:
            # The first step subscribes and reads the job: an unknown job (404) or too many
            # listeners (429) is answered as such, before the stream starts.
            first = await anext(events)
        except ServiceError as exc:
            return Response(status_code=exc.status_code)
        return StreamingResponse(
            _chain(first, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(
        self, request: Request, tenant: str, job_id: str
    ) -> AsyncGenerator[bytes, None]:
        state = self.templates.get_template("_state.html")
        final = self.templates.get_template("_final.html")
        csrf = self.sessions.csrf_token(request.cookies.get(COOKIE, ""))
        current: MCPJobStatusResponse | None = None
        async for shared in self.svc.engine.events(tenant, job_id):
            if shared is None:
                yield b": keep-alive\n\n"
                continue
            event = shared.event
            if event.type == "output" and event.text:
                yield sse_event("output", output_span(event.stream or "stdout", event.text))
            elif event.type == "progress" and current is not None:
                current = current.model_copy(
                    update={"progress": event.progress, "progress_message": event.message}
                )
                yield sse_event("state", state.render(job=current, csrf=csrf))
            elif event.type == "status" and event.job is not None:
                current = event.job
                yield sse_event("state", state.render(job=current, csrf=csrf))
                if current.is_terminal:
                    yield sse_event("final", final.render(job=current))
                    yield sse_event("done", "")
                    return

    async def cancel(self, request: Request) -> Response:
        tenant, _ = await self.action(request)
        job_id = request.path_params["job_id"]
        try:
            await self.svc.engine.cancel(tenant, job_id, "cancelled from the dashboard")
        except ServiceError as exc:
            if exc.status_code == 404:
                return self.render(request, "not_found.html", status=404, job_id=job_id)
        return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)

    async def cancel_many(self, request: Request) -> Response:
        """Cancel the jobs ticked in the list; back to the list with what happened."""
        tenant = await self.tenant(request)
        form = await read_form_lists(request)
        if not self.check_post(request, {k: v[-1] for k, v in form.items()}):
            raise CrossSiteRequest
        ids = list(dict.fromkeys(form.get("job", [])))[:PAGE_SIZE]
        outcomes = await asyncio.gather(
            *(self.svc.engine.cancel(tenant, i, "cancelled from the dashboard") for i in ids),
            return_exceptions=True,
        )
        for outcome in outcomes:
            # Already ended, or not the tenant's: nothing to cancel. Anything else is a bug.
            if isinstance(outcome, BaseException) and not isinstance(outcome, ServiceError):
                raise outcome
        ended = sum(isinstance(o, ServiceError) for o in outcomes)
        canceled = len(outcomes) - ended
        back = {k: v[-1] for k, v in form.items() if k in LIST_FILTERS and v[-1]}
        back.update(canceled=str(canceled), not_canceled=str(ended))
        return RedirectResponse(f"/ui/jobs?{urlencode(back)}", status_code=303)

    async def rerun(self, request: Request) -> Response:
        """Submit the same request again; land on the new job."""
        tenant, _ = await self.action(request)
        job_id = request.path_params["job_id"]
        try:
            old = await self.svc.engine.get(tenant, job_id)
            again = JobSubmitRequest(
                name=old.name,
                job_type=old.job_type,
                data=old.data,
                timeout=old.timeout,
                priority=old.priority,
                tags=list(old.tags),
            )
            new, _ = await self.svc.engine.submit(tenant, again)
        except ServiceError as exc:
            if exc.status_code == 404:
                return self.render(request, "not_found.html", status=404, job_id=job_id)
            return HTMLResponse(html.escape(exc.message), status_code=exc.status_code)
        return RedirectResponse(f"/ui/jobs/{new.id}", status_code=303)

    async def download(self, request: Request) -> Response:
        """The job's output (or generated text) as a text file."""
        tenant = await self.tenant(request)
        job_id = request.path_params["job_id"]
        try:
            job = job_status(await self.svc.engine.get(tenant, job_id))
        except ServiceError:
            return self.render(request, "not_found.html", status=404, job_id=job_id)
        result = job.result or {}
        if isinstance(result.get("text"), str):
            body = result["text"]
        else:
            body = str(result.get("stdout") or "")
            if result.get("stderr"):
                body += "\n--- stderr ---\n" + str(result["stderr"])
        return Response(
            body,
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{job.job_id}.txt"'},
        )

    # -- what the server runs --

    async def runtimes(self, request: Request) -> HTMLResponse:
        await self.tenant(request)
        described = self.svc.engine.describe()
        code = described.get("code_execution") or {}
        text = described.get("text_generation") or {}
        return self.render(
            request,
            "runtimes.html",
            languages=code.get("languages") or [],
            sandbox=code.get("sandbox") or {},
            limits=code.get("limits") or {},
            models=text.get("models") or [],
            default_model=text.get("default_model"),
        )

    # -- submit --

    async def submit_form(self, request: Request) -> HTMLResponse:
        await self.tenant(request)
        return self.render(request, "submit.html", error=None, form={}, languages=self._langs())

    def _langs(self) -> list[str]:
        described = self.svc.engine.describe().get("code_execution") or {}
        return [lang["name"] for lang in described.get("languages") or ()]

    async def submit(self, request: Request) -> Response:
        tenant, form = await self.action(request)
        try:
            job, _ = await self.svc.engine.submit(tenant, submit_request(form))
        except (ServiceError, ValueError) as exc:
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            return self.render(
                request,
                "submit.html",
                status=422,
                error=message,
                form=form,
                languages=self._langs(),
            )
        return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


async def _chain(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """``first``, then ``rest``; closing this closes ``rest`` (and its subscription) too."""
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


def router(services: Services, sessions: Sessions) -> APIRouter:
    """The dashboard under ``/ui``, with its static files."""
    ui = Dashboard(services, sessions)
    api = APIRouter(prefix="/ui", include_in_schema=False)

    async def home(request: Request) -> Response:
        return RedirectResponse("/ui/jobs", status_code=303)

    routes: list[tuple[str, Any, str]] = [
        ("", home, "GET"),
        ("/", home, "GET"),
        ("/login", ui.login_form, "GET"),
        ("/login", ui.login, "POST"),
        ("/logout", ui.logout, "POST"),
        ("/jobs", ui.jobs, "GET"),
        ("/jobs/rows", ui.job_rows, "GET"),
        ("/jobs/cancel", ui.cancel_many, "POST"),
        ("/jobs/{job_id}", ui.job, "GET"),
        ("/jobs/{job_id}/stream", ui.job_stream, "GET"),
        ("/jobs/{job_id}/cancel", ui.cancel, "POST"),
        ("/jobs/{job_id}/rerun", ui.rerun, "POST"),
        ("/jobs/{job_id}/output.txt", ui.download, "GET"),
        ("/runtimes", ui.runtimes, "GET"),
        ("/submit", ui.submit_form, "GET"),
        ("/submit", ui.submit, "POST"),
    ]
    for path, endpoint, method in routes:
        api.add_api_route(path, endpoint, methods=[method], response_model=None)
    return api


def static_files() -> StaticFiles:
    """The dashboard's stylesheet and vendored libraries (``scripts/setup-ui-assets.sh``)."""
    return StaticFiles(directory=str(HERE / "static"))


def install(app: Any, services: Services, sessions: Sessions) -> None:
    """Mount the dashboard on ``app``: pages, static files, and the sign-in redirect."""
    if not (HERE / "static" / "vendor" / "htmx.min.js").exists():
        logger.warning(
            "dashboard: its libraries are missing (run scripts/setup-ui-assets.sh); /ui "
            "still works but does not update live"
        )
    app.include_router(router(services, sessions))
    app.mount("/ui/static", static_files(), name="ui-static")

    async def sign_in_first(request: Request, exc: Exception) -> Response:
        if request.url.path.endswith(("/rows", "/stream")):
            return Response(status_code=401)
        return RedirectResponse("/ui/login", status_code=303)

    async def refuse(request: Request, exc: Exception) -> Response:
        return HTMLResponse("cross-site request refused", status_code=403)

    app.add_exception_handler(SignInRequired, sign_in_first)
    app.add_exception_handler(CrossSiteRequest, refuse)
