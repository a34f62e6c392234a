"""Database growth per 1,000 scans, with the original kept in the database (as before issue
19) and with it deleted once the worker stored it (now).

Each scan goes through the production code: `api.intake.add_scan` (row, blob, `queued`
event), the worker's `claim` and `finish` (its result write, which now deletes the blob),
with storage refs as the worker writes them. "before" runs the same `finish` with the blob
deletion switched off. Uploads are synthetic brain slices from the research generator (512 px
PNG by default, about the size of the Kaggle dataset's slices).

    python -m bench.db_growth [--scans 1000] [--size 512] [--database-url postgresql://...]

Prints JSON and writes bench/results/db_growth.json. Sizes: SQLite's used pages (page count
less the free list), PostgreSQL's total relation sizes of our tables (heap, TOAST, indexes),
as the files stand and after VACUUM FULL (deleted blobs' pages wait for a vacuum to be reused).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import create_engine, text

_TABLES = ("scan_results", "scan_uploads", "scan_events", "batches")


def _uploads(count: int, size: int) -> list[bytes]:
    from research.synth.generate import render_sample
    from shared.labels import CLASSES

    out = []
    for seed in range(count):
        image, _mask, _meta = render_sample(np.random.default_rng(seed), CLASSES[seed % 4], size)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _used_bytes(sync_url: str, compact: bool = False) -> int:
    engine = create_engine(sync_url)
    try:
        if compact and engine.dialect.name != "sqlite":
            # Deleted rows' pages (TOAST included) stay in the files until a vacuum: what the
            # data really holds is what VACUUM FULL leaves.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for table in _TABLES:
                    conn.exec_driver_sql(f"VACUUM FULL {table}")
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
                pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
                free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
                return int((pages - free) * page)
            return int(sum(conn.execute(text("SELECT pg_total_relation_size(:t)"),
                                        {"t": t}).scalar_one() for t in _TABLES))
    finally:
        engine.dispose()


def measure(database_url: str, scans: int, uploads: list[bytes],
            keep_blobs: bool) -> tuple[int, int]:
    """Bytes the database grew by for `scans` scans through intake and the worker's write:
    as the files stand, and once compacted (PostgreSQL: VACUUM FULL; SQLite: the same)."""
    from api import intake
    from shared.db.migrate import upgrade_to_head
    from shared.db.models import Tenant, new_id
    from shared.db.session import async_write_session, forget_engines, sync_session
    from shared.settings import _with_driver
    from worker import pipeline

    sync_url = _with_driver(database_url, asyncio=False)
    upgrade_to_head(sync_url)
    forget_engines()
    with sync_session(sync_url) as session:
        tenant = Tenant(id=new_id(), name=f"growth-{new_id()[:8]}")
        session.add(tenant)
    start = _used_bytes(sync_url, compact=True)

    async def accept(data: bytes) -> str:
        upload = intake.AcceptedUpload(data=data, format="png", filename="slice.png", frame=None)
        async with async_write_session(_with_driver(database_url, asyncio=True)) as session:
            return intake.add_scan(session, tenant.id, upload).id

    original = pipeline.settle_results
    if keep_blobs:  # the write as it was before originals left the database
        pipeline.settle_results = lambda *_a, **_k: None  # type: ignore[assignment]
    try:
        loop = asyncio.new_event_loop()
        for i in range(scans):
            scan_id = loop.run_until_complete(accept(uploads[i % len(uploads)]))
            with sync_session(sync_url) as session:
                pipeline.claim(session, [scan_id], owner="growth", lease_s=60)
            fields: dict[str, Any] = {
                "image_ref": f"local:uploads/{scan_id}.png",
                "heatmap_ref": f"local:results/{scan_id}-heatmap.png",
                "overlay_ref": f"local:results/{scan_id}-overlay.png",
                "label": "glioma", "confidence": 0.91,
                "probabilities": {"glioma": 0.91, "meningioma": 0.04, "notumor": 0.03,
                                  "pituitary": 0.02},
                "gate": {"accepted": True, "code": None, "reason": None},
                "model_name": "neuroscan-cnn", "model_version": "1.3.0", "model_sha256": "0" * 64,
                "timings": {"batch_size": 1, "decode_ms": 3.0, "inference_ms": 40.0,
                            "storage_ms": 5.0}}
            with sync_session(sync_url) as session:
                pipeline.finish(session, [pipeline.Outcome(scan_id, pipeline.JobState.SUCCEEDED,
                                                           fields)])
        loop.close()
    finally:
        pipeline.settle_results = original
    forget_engines()
    return _used_bytes(sync_url) - start, _used_bytes(sync_url, compact=True) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--database-url", default=None,
                        help="an empty database (default: two fresh SQLite files)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/db_growth.json"))
    args = parser.parse_args()
    uploads = _uploads(16, args.size)
    result: dict[str, Any] = {"scans": args.scans, "upload_px": args.size,
                              "mean_upload_bytes": int(np.mean([len(u) for u in uploads]))}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, keep in (("before", True), ("after", False)):
            url = args.database_url or f"sqlite+aiosqlite:///{tmp}/{mode}.db"
            grown, compacted = measure(url, args.scans, uploads, keep)
            result[f"{mode}_bytes_per_1000_scans"] = round(grown * 1000 / args.scans)
            result[f"{mode}_compacted_bytes_per_1000_scans"] = round(
                compacted * 1000 / args.scans)
    result["backend"] = "postgresql" if args.database_url else "sqlite"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
