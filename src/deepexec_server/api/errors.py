"""The FastAPI app's exception handlers: every failure becomes the JSON error envelope
(built by ``web/envelope.py``), and validation errors name each problem."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BadRequest, ServiceError, Unprocessable
from ..web.asgi import scope_request_id
from ..web.envelope import error_answer, error_body, internal_error

logger = logging.getLogger("deepexec_server.api")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


def request_id(request: Request) -> str:
    return scope_request_id(request.scope)


def envelope(
    request: Request, status: int, type_: str, message: str, details: Any = None
) -> Response:
    body = error_body(type_, message, request_id(request), details)
    return Response(body, status_code=status, media_type="application/json")


def validation_details(
    errors: Iterable[Mapping[str, Any]], prefix: tuple[str | int, ...] = ()
) -> list[dict[str, Any]]:
    """pydantic's (or FastAPI's) error list as the envelope's ``details``: ``loc`` (after
    ``prefix``), ``msg`` and ``type`` of each error."""
    out = []
    for err in errors:
        item: dict[str, Any] = {
            "loc": [*prefix, *err.get("loc", ())],
            "msg": err.get("msg", ""),
        }
        if "type" in err:
            item["type"] = err["type"]
        out.append(item)
    return out


def _describe(details: list[dict[str, Any]]) -> str:
    parts = []
    for d in details[:5]:
        loc = ".".join(str(p) for p in d["loc"] if p != "body") or "body"
        parts.append(f"{loc}: {d['msg']}")
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return "; ".join(parts) + more


def validation_failure(details: list[dict[str, Any]]) -> ServiceError:
    """The error a request that failed validation gets: 400 ``invalid_json`` when its body is
    not JSON at all, else 422 ``validation_error``; the message names each problem."""
    if any(d.get("type") == "json_invalid" for d in details):
        return BadRequest(
            "the request body is not valid JSON: " + _describe(details),
            type="invalid_json",
            details=details,
        )
    return Unprocessable("invalid request: " + _describe(details), details=details)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        status, body, headers = error_answer(exc, request_id(request))
        response = Response(body, status_code=status, media_type="application/json")
        for name, value in headers:
            response.headers[name.decode()] = value.decode()
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        failure = validation_failure(validation_details(exc.errors()))
        return envelope(
            request, failure.status_code, failure.type, failure.message, failure.details
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        return envelope(request, exc.status_code, type_, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        rid = request_id(request)
        logger.error("request %s failed", rid, exc_info=exc)
        failure = internal_error(rid)
        return envelope(request, failure.status_code, failure.type, failure.message)
