"""Liveness and readiness (and the original product's greeting at `/`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep
from api.intake import producer

router = APIRouter(tags=["health"])

_BROKER_TIMEOUT_S = 3.0


@router.get("/", summary="Service greeting")
async def root() -> dict[str, str]:
    """The original product's health JSON, unchanged."""
    return {"status": "success", "message": "NeuroScan AI Backend is Running"}


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process is up and serving requests."""
    return {"status": "ok"}


def _ping_broker() -> None:
    with producer().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=_BROKER_TIMEOUT_S)


@router.get("/readyz", summary="Readiness", responses={503: {"description": "Not ready"}})
async def readyz(session: SessionDep) -> Any:
    """Ready when the database and the broker answer; 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await asyncio.wait_for(run_in_threadpool(_ping_broker), _BROKER_TIMEOUT_S + 1)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    if not ready:
        body["error"] = {"code": "unavailable", "message": "A dependency is unreachable."}
    return JSONResponse(body, status_code=200 if ready else 503)
