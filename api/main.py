"""The FastAPI application: thin routes over the database and the queue; never TensorFlow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator, metrics
from starlette.formparsers import MultiPartParser

from api.errors import install_error_handlers
from api.guard import RequestGuard
from api.routes import (
    audit,
    batches,
    deletion,
    dicomweb,
    events,
    export,
    health,
    me,
    media,
    meta,
    reports,
    scans,
    series,
    web,
)
from shared.db.session import async_engine
from shared.logs import (
    REQUEST_ID_HEADER,
    configure_logging,
    propagate_request_ids,
    valid_request_id,
)
from shared.settings import get_settings
from shared.storage import topology_problem

DESCRIPTION = """
Explainable brain-MRI tumour triage. Submit a slice (PNG, JPEG or DICOM) or a batch; a worker
classifies it as glioma, meningioma, pituitary tumour or no tumour and explains the call with
a Grad-CAM heatmap. Every `/v1` route needs `Authorization: Bearer <api key>`.

Research use only: every result must be verified by a board-certified radiologist.
"""

# Starlette keeps each uploaded file in memory up to this size before spooling it to a
# temporary file (default 1 MiB). A batch is hundreds of slices of a few hundred KiB each:
# spool early, so a large request never sits in memory whole.
MultiPartParser.spool_max_size = 64 * 1024

# Routers, mounted in this order. To add one: import it above and add one entry here.
_ROUTERS: list[APIRouter] = [
    health.router,
    me.router,
    scans.router,
    batches.router,
    events.router,
    media.router,
    reports.router,
    web.router,
    meta.router,
    series.router,
    dicomweb.router,
    deletion.router,
    audit.router,
    export.router,
]


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    problem = topology_problem(get_settings())
    if problem:  # uvicorn reports the startup failure and exits non-zero
        raise RuntimeError(f"refusing to start: {problem}")
    yield
    await async_engine().dispose()


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings)
    propagate_request_ids()  # into the Celery messages a request sends
    app = FastAPI(title="NeuroScan API", version="1.0.0", description=DESCRIPTION,
                  lifespan=_lifespan)
    # Innermost: key and body size are checked before any route or body parser runs.
    app.add_middleware(RequestGuard)
    # JSON pages (history, batches) shrink a lot; SSE is left alone by Starlette's GZip.
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["*"], allow_headers=["Authorization", "Content-Type",
                                                               "Last-Event-ID", REQUEST_ID_HEADER],
                           expose_headers=[REQUEST_ID_HEADER])
    # Outermost: every answer, a 401 or 413 from the guard too, carries X-Request-ID (the
    # caller's, if it is a plain token, else a new one), and every log line of the request.
    app.add_middleware(CorrelationIdMiddleware, header_name=REQUEST_ID_HEADER,
                       validator=valid_request_id)
    install_error_handlers(app)
    for router in _ROUTERS:
        app.include_router(router)
    _instrument(app)
    return app


def _instrument(app: FastAPI) -> None:
    """Prometheus `/metrics`: requests by route template (never a scan id), method and status
    class, and their latency. A registry per app, so that tests may build many apps.

    Counts and latency only: the library's default set also reads sizes from the request's
    Content-Length header with int(), and a hostile header ("not-a-number") then became a 500."""
    registry = CollectorRegistry()
    instrumentator = Instrumentator(excluded_handlers=["/metrics"], should_group_status_codes=True,
                                    registry=registry)
    instrumentator.add(metrics.requests(registry=registry), metrics.latency(registry=registry))
    instrumentator.instrument(app).expose(app, include_in_schema=False)


app = create_app()
