"""One place that turns every failure into the JSON error envelope."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ServiceError

logger = logging.getLogger("deepexec_server.api")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def envelope(
    request: Request, status: int, type_: str, message: str, details: Any = None
) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "type": type_,
                "message": message,
                "details": details,
                "request_id": request_id(request),
            }
        },
        status_code=status,
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item: dict[str, Any] = {"loc": list(err.get("loc", ())), "msg": err.get("msg", "")}
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return envelope(request, exc.status_code, exc.type, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        if any(d.get("type") == "json_invalid" for d in details):
            return envelope(
                request,
                400,
                "invalid_json",
                "the request body is not valid JSON: " + _describe(details),
                details,
            )
        return envelope(
            request, 422, "validation_error", "invalid request: " + _describe(details), details
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        return envelope(request, exc.status_code, type_, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id(request)
        logger.error("request %s failed", rid, exc_info=exc)
        return envelope(
            request,
            500,
            "internal_error",
            f"internal error; the server log has the details under request {rid}",
        )
