"""The C-STORE receiver (`neuroscan dicom-listen`): a PACS pushes series over DICOM networking.

One pynetdicom AE on DICOM_HOST:DICOM_PORT answers for every tenant in DICOM_TENANTS: the
called AE title names the tenant, and only that tenant's calling AE titles may store (other
callers are rejected at association, a known caller addressing another tenant's title gets
0x0124 "Refused: not authorised"). Each instance goes through the same intake as STOW-RS
(`api.series_intake`): checks, de-identification, one transaction, the queue. A success
status is sent only once the instance is committed. The series' finalisation is scheduled
when the association ends.

Presentation contexts: Verification, MR Image Storage and Enhanced MR Image Storage, each
with the transfer syntaxes NeuroScan decodes (docs/hospital.md, DICOM conformance).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    EnhancedMRImageStorage,
    MRImageStorage,
    Verification,
)

from api import series_intake
from shared import errors
from shared.errors import InputError
from shared.settings import DicomTenant, Settings, get_settings

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
]
STORAGE_SOP_CLASSES = {"MR Image Storage": MRImageStorage,
                       "Enhanced MR Image Storage": EnhancedMRImageStorage}
NOT_AUTHORISED, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED = 0x0124, 0xA700, 0x0122
DOES_NOT_MATCH, CANNOT_UNDERSTAND, PROCESSING_FAILURE = 0xA900, 0xC000, 0x0110
_STATUS_BY_CODE = {errors.FILE_TOO_LARGE: OUT_OF_RESOURCES,
                   "dicom_modality_not_allowed": SOP_CLASS_NOT_SUPPORTED,
                   "dicom_encapsulated_document": SOP_CLASS_NOT_SUPPORTED,
                   "dicom_no_pixel_data": DOES_NOT_MATCH, "dicom_missing_uid": DOES_NOT_MATCH}


@dataclass
class _Node:
    config: DicomTenant
    tenant_id: str


@dataclass
class Listener:
    """The receiver; `start()` returns once it listens, `stop()` shuts it down."""

    settings: Settings = field(default_factory=get_settings)
    _nodes: dict[str, _Node] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: Any = None
    _pending: dict[int, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, port: int | None = None) -> int:
        if not self.settings.dicom_tenants:
            raise RuntimeError("DICOM_TENANTS is empty: no tenant receives DICOM")
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="dicom-db", daemon=True).start()
        self._nodes = self._run(self._resolve_tenants())
        ae = AE(ae_title="NEUROSCAN")
        ae.require_called_aet = False  # checked per tenant in _on_store
        ae.require_calling_aet = sorted({a for t in self.settings.dicom_tenants
                                         for a in t.calling_aes})
        ae.maximum_pdu_size = 0
        ae.add_supported_context(Verification)
        for sop_class in STORAGE_SOP_CLASSES.values():
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda _e: 0x0000),
                    (evt.EVT_RELEASED, self._on_end), (evt.EVT_ABORTED, self._on_end)]
        bind = port if port is not None else self.settings.dicom_port
        self._server = ae.start_server((self.settings.dicom_host, bind), block=False,
                                       evt_handlers=handlers)
        actual: int = self._server.server_address[1]
        log.info("C-STORE receiver on %s:%d for %s", self.settings.dicom_host, actual,
                 ", ".join(sorted(self._nodes)))
        return actual

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self, coro: Any, timeout: float = 120.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _resolve_tenants(self) -> dict[str, _Node]:
        from sqlalchemy import select

        from shared.db.models import Tenant
        from shared.db.session import async_session_factory

        nodes: dict[str, _Node] = {}
        async with async_session_factory()() as session:
            for config in self.settings.dicom_tenants:
                tenant_id = await session.scalar(select(Tenant.id).where(
                    Tenant.name == config.tenant))
                if tenant_id is None:
                    raise RuntimeError(f"DICOM_TENANTS names an unknown tenant {config.tenant!r}")
                nodes[config.ae_title.strip()] = _Node(config, tenant_id)
        return nodes

    def _on_store(self, event: Any) -> int:
        called = str(event.assoc.requestor.primitive.called_ae_title).strip()
        calling = str(event.assoc.requestor.ae_title).strip()
        node = self._nodes.get(called)
        if node is None or calling not in node.config.calling_aes:
            log.warning("C-STORE refused: calling AE %r may not store to %r", calling, called)
            return NOT_AUTHORISED
        try:
            data = event.encoded_dataset(include_meta=True)
            instance = series_intake.judge_instance(data, node.tenant_id, self.settings)
            stored = self._run(series_intake.store_instances(
                [instance], node.tenant_id, "c-store", self.settings, schedule=False))
        except InputError as exc:
            log.info("C-STORE instance refused: %s", exc.code)
            return _STATUS_BY_CODE.get(exc.code, CANNOT_UNDERSTAND)
        except Exception:
            log.exception("C-STORE instance could not be stored")
            return OUT_OF_RESOURCES
        with self._lock:
            self._pending.setdefault(id(event.assoc), set()).update(s.series_id for s in stored)
        return 0x0000

    def _on_end(self, event: Any) -> None:
        with self._lock:
            series_ids = self._pending.pop(id(event.assoc), set())
        if series_ids:
            series_intake.schedule_finalize(sorted(series_ids),
                                            self.settings.dicom_series_settle_s)
