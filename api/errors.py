"""Every error leaves the API as `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import NeuroScanError, ServiceBusy
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

_CODES_BY_STATUS = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "file_too_large",
    415: "unsupported_media_type", 422: "validation_error", 429: "too_many_requests",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **extra},
                        status_code=status, headers=headers)


def _retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


async def _neuroscan_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NeuroScanError)
    headers = _retry_after(exc.retry_after_s) if isinstance(exc, ServiceBusy) else None
    return error_response(exc.http_status, exc.code, exc.message, headers=headers)


def unavailable_response(exc: BaseException, settings: Settings | None = None
                         ) -> JSONResponse | None:
    """503 + Retry-After for a saturated or unreachable database; None for anything else.

    A pool that stays exhausted for `db_pool_timeout_s` raises SQLAlchemy's TimeoutError; a
    database that is down or locked raises OperationalError/InterfaceError or a connection
    error from the driver. None of them is the client's fault or a bug to hide as a 500."""
    retry = _retry_after((settings or get_settings()).overload_retry_after_s)
    if isinstance(exc, ServiceBusy):
        return error_response(503, exc.code, exc.message, headers=_retry_after(exc.retry_after_s))
    if isinstance(exc, sa_exc.TimeoutError):
        log.warning("database connection pool exhausted: answering 503")
        return error_response(503, "unavailable", "The service is busy; try again shortly.",
                              headers=retry)
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, ConnectionError,
                        TimeoutError)) or (isinstance(exc, sa_exc.DBAPIError)
                                           and exc.connection_invalidated):
        log.warning("database unavailable: %s: answering 503", type(exc).__name__)
        return error_response(503, "unavailable",
                              "The database is unavailable or busy; try again shortly.",
                              headers=retry)
    return None


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    answer = unavailable_response(exc)
    if answer is not None:
        return answer
    log.exception("unhandled database error", exc_info=exc)
    return error_response(500, "internal_error", "An unexpected error occurred.")


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if isinstance(detail, dict) and "code" in detail:
        code, message = str(detail["code"]), str(detail.get("message", ""))
    else:
        code = _CODES_BY_STATUS.get(exc.status_code, "http_error")
        message = str(detail)
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header"))
        problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return error_response(422, "validation_error", "; ".join(problems) or "Invalid request.")


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    answer = unavailable_response(exc)  # e.g. a driver's ConnectionError, raised bare
    if answer is not None:
        return answer
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "An unexpected error occurred.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NeuroScanError, _neuroscan_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _database_error)
    app.add_exception_handler(ConnectionError, _unexpected)
    app.add_exception_handler(Exception, _unexpected)
