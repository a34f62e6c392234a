"""Where a worker's batch time goes, stage by stage, on the shipped model and real-size JPEGs.

    .venv/bin/python -m bench.profile_worker [--batch 32] [--size 512] [--repeats 5]
                                             [--cprofile] [--out bench/results/profile.json]

Each stage of the result path is timed on its own, in the order the worker runs it, on the
same inputs: decode, the input gate's rules, preprocessing, the compiled model + Grad-CAM
pass (with the learned gate's features), mapping the maps back to each original frame, the
overlay and heatmap encodings (PNG, WebP and JPEG measured side by side for the overlay),
local-disk storage, and the database's claim + finish of the batch on a scratch PostgreSQL
database (`--pg`; TEST_PG_ADMIN_URL as in the tests). The median over `--repeats` is
reported per batch and per image; every stage runs on one thread except `analyse_whole`,
the worker's real call (WORKER_THREADS). With `--cprofile` the whole
`worker.inference.analyse` call is also profiled and its top functions printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "profile.json"


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def stages(batch: int, size: int, repeats: int) -> dict[str, Any]:
    import cv2

    from shared.imaging import decode_image
    from shared.preprocessing import preprocess
    from tests.support.images import brain_jpeg
    from worker import overlay
    from worker.gate import assess
    from worker.inference import analyse, run_batch_with_features
    from worker.model.gradcam_postprocess import to_original_frame
    from worker.pipeline import get_model

    model = get_model()  # also sets the thread counts (OpenCV: one thread)
    blobs = [brain_jpeg(2000 + i, size=size) for i in range(batch)]
    images = [decode_image(b) for b in blobs]
    prepared = [preprocess(img.pixels, model.input_size) for img in images]
    x = np.stack([p for p, _, _ in prepared])
    for _ in range(2):  # trace and warm the compiled graph
        run_batch_with_features(model, x, -2)
    _, cams, _ = run_batch_with_features(model, x, -2)
    full = [to_original_frame(cams[i], prepared[i][1], images[i].pixels.shape[:2])
            for i in range(batch)]

    scaled = [p[2] for p in prepared]

    def encode_all(fmt: str, params: list[int], kind: str) -> None:
        for img, cam, sc in zip(images, full, scaled, strict=True):
            bgr = overlay.blend(img.pixels, cam, sc) if kind == "overlay" else overlay.colorize(cam)
            cv2.imencode(fmt, bgr, params)

    sizes: dict[str, float] = {}
    for name, fmt, params in (("png", ".png", []), ("png_fast", ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
                              ("webp_q80", ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
                              ("jpeg_q90", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90])):
        sizes[name] = statistics.mean(
            len(cv2.imencode(fmt, overlay.blend(img.pixels, cam, sc), params)[1])
            for img, cam, sc in zip(images, full, scaled, strict=True))

    with tempfile.TemporaryDirectory() as tmp:
        from shared.storage import LocalStorage

        storage = LocalStorage(Path(tmp), secret_key="bench")
        pngs = [overlay.overlay_png(img.pixels, cam) for img, cam in zip(images, full, strict=True)]
        rows = {
            "decode": _median_ms(lambda: [decode_image(b) for b in blobs], repeats),
            "gate_rules": _median_ms(lambda: [assess(img) for img in images], repeats),
            "preprocess": _median_ms(lambda: [preprocess(img.pixels, model.input_size)
                                              for img in images], repeats),
            "model_gradcam": _median_ms(lambda: run_batch_with_features(model, x, -2), repeats),
            "map_back": _median_ms(lambda: [to_original_frame(cams[i], prepared[i][1],
                                                              images[i].pixels.shape[:2])
                                            for i in range(batch)], repeats),
            "blend": _median_ms(lambda: [overlay.blend(img.pixels, cam, sc) for img, cam, sc
                                         in zip(images, full, scaled, strict=True)], repeats),
            "overlay_png": _median_ms(lambda: encode_all(".png", [], "overlay"), repeats),
            "overlay_png_fast": _median_ms(lambda: encode_all(
                ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1], "overlay"), repeats),
            "overlay_webp_q80": _median_ms(lambda: encode_all(
                ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "overlay"), repeats),
            "overlay_jpeg_q90": _median_ms(lambda: encode_all(
                ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90], "overlay"), repeats),
            "heatmap_png": _median_ms(lambda: encode_all(".png", [], "heatmap"), repeats),
            "storage_local_3_files": _median_ms(lambda: [
                (storage.put("uploads", f"{i}.jpg", blobs[i], "image/jpeg"),
                 storage.put("results", f"{i}-heatmap.png", pngs[i], "image/png"),
                 storage.put("results", f"{i}-overlay.png", pngs[i], "image/png"))
                for i in range(batch)], repeats),
            "analyse_whole": _median_ms(lambda: analyse(images, model), repeats),
        }
    return {
        "batch": batch, "image_side": size, "repeats": repeats,
        "model": {"name": model.name, "version": model.version, "input_size": model.input_size},
        "batch_ms": {k: round(v, 2) for k, v in rows.items()},
        "per_image_ms": {k: round(v / batch, 3) for k, v in rows.items()},
        "overlay_bytes_mean": {k: round(v) for k, v in sizes.items()},
        "analyse_images_per_s": round(batch / rows["analyse_whole"] * 1e3, 1),
    }


def database(batch: int, repeats: int) -> dict[str, float]:
    """claim + finish of `batch` scans on a scratch PostgreSQL database, ms per batch."""
    from sqlalchemy import event

    from api.intake import AcceptedUpload, add_scan
    from shared.db.migrate import upgrade_to_head
    from shared.db.session import sync_engine, sync_session
    from shared.db.tenants import issue_key
    from shared.states import JobState
    from tests.support.images import brain_jpeg
    from tests.support.inprocess import settings_env
    from tests.support.stack import create_pg_database, drop_pg_database
    from worker.pipeline import Outcome, claim, finish

    url = create_pg_database("nsbench")
    blob = brain_jpeg(1, size=512)
    claims, finishes = [], []
    statements: list[str] = []
    try:
        with settings_env(database_url=url):
            upgrade_to_head()
            event.listen(sync_engine(), "before_cursor_execute",
                         lambda *a, **k: statements.append(a[2].split(None, 1)[0]))
            with sync_session() as session:
                tenant = issue_key(session, "bench").tenant.id
            for _ in range(repeats):
                with sync_session() as session:
                    ids = [add_scan(session, tenant, AcceptedUpload(blob, "jpeg", "b.jpg", None)).id
                           for _ in range(batch)]
                statements.clear()
                t0 = time.perf_counter()
                with sync_session() as session:
                    claim(session, ids, "bench", 30.0)
                t1 = time.perf_counter()
                n_claim = len(statements)
                with sync_session() as session:
                    finish(session, [Outcome(i, JobState.SUCCEEDED, {
                        "label": "glioma", "confidence": 0.9,
                        "probabilities": {"glioma": 0.9}, "timings": {}}) for i in ids])
                t2 = time.perf_counter()
                claims.append(t1 - t0)
                finishes.append(t2 - t1)
                n_finish = len(statements) - n_claim
    finally:
        drop_pg_database(url)
    return {"db_claim_pg": statistics.median(claims) * 1e3,
            "db_finish_pg": statistics.median(finishes) * 1e3,
            "db_claim_statements": n_claim, "db_finish_statements": n_finish}


def profile_analyse(batch: int, size: int, top: int = 25) -> str:
    from shared.imaging import decode_image
    from tests.support.images import brain_jpeg
    from worker.inference import analyse
    from worker.pipeline import get_model

    model = get_model()
    images = [decode_image(brain_jpeg(3000 + i, size=size)) for i in range(batch)]
    analyse(images, model)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        analyse(images, model)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--pg", action="store_true", help="also time claim + finish on PostgreSQL")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = stages(args.batch, args.size, args.repeats)
    if args.pg:
        db = database(args.batch, args.repeats)
        counts = {k: db.pop(k) for k in ("db_claim_statements", "db_finish_statements")}
        result["batch_ms"].update({k: round(v, 2) for k, v in db.items()})
        result["per_image_ms"].update({k: round(v / args.batch, 3) for k, v in db.items()})
        result["db_statements_per_batch"] = counts
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "loadavg_1m": os.getloadavg()[0]}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.cprofile:
        print(profile_analyse(args.batch, args.size))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
