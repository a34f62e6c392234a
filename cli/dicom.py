"""`neuroscan dicom-listen`: the C-STORE receiver (api/dicom_listener.py) as a process."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer


def dicom_listen(
    port: Annotated[int | None, typer.Option(help="TCP port (default DICOM_PORT).")] = None,
) -> None:
    """Receive series by DICOM C-STORE for the tenants in DICOM_TENANTS (Ctrl-C stops)."""
    import logging

    from api.dicom_listener import Listener
    from shared.settings import get_settings

    settings = get_settings()
    logging.basicConfig(level=settings.log_level)
    listener = Listener(settings)
    bound = listener.start(port)
    titles = ", ".join(f"{t.ae_title} ({t.tenant})" for t in settings.dicom_tenants)
    typer.echo(f"C-STORE receiver listening on {settings.dicom_host}:{bound}: {titles}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    listener.stop()
