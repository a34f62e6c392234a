"""A worker's peak memory on huge images: a batch of eight 8000x8000 PNGs, and one.

    .venv/bin/python -m bench.huge_images [--side 8000] [--count 8] [--full-size-batch]
                                          [--out bench/results/huge_images.json]

Each measurement runs in a fresh process: it loads the shipped model as the worker does
(`worker.pipeline.get_model`), then runs the worker's per-batch path on the files
(`worker.pipeline.analyse_and_store`: decode, gate, preprocessing, the model + Grad-CAM pass,
overlay, heatmap and preview encoding, storage on local disk) with WORKER_THREADS as
configured. Reported: RSS after the model load, the peak RSS of the whole process (VmHWM,
which includes the model load) and the peak while the batch ran (sampled every 10 ms), and
each scan's outcome.

Two decode paths: the bounded one (DECODE_MAX_SIDE=1024, the default) and full-size decoding
(DECODE_MAX_SIDE=0, what every image went through before). Full size is measured for one
image only unless `--full-size-batch` (the issue measured 8.4 GiB for the batch: this machine
is shared, so that figure is quoted, not re-run, by default).

The images are a synthetic brain slice (the research generator) upscaled to `--side` with
a little texture, a grey PNG within MAX_UPLOAD_BYTES and the pixel budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "huge_images.json"
ISSUE_BASELINE_MIB = {"batch_of_8": 8.4 * 1024, "single": 4.6 * 1024}


def _status_mib(field: str) -> float:
    """VmRSS or VmHWM (the peak) of this process; unlike ru_maxrss, VmHWM starts afresh at
    exec, so a child never reports its parent's peak."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text)[1]) / 1024  # type: ignore[index]


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def make_images(side: int, count: int, folder: Path) -> list[Path]:
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from tests.support.images import brain_slice

    paths = []
    for i in range(count):
        path = folder / f"huge-{i}.png"
        if not path.exists():
            small = Image.fromarray(brain_slice(100 + i, size=512))
            big = np.asarray(small.resize((side, side), Image.Resampling.BICUBIC), np.uint8)
            rng = np.random.default_rng(i)
            # Mild grain (as a real high-resolution export has), keeping the file under 32 MB.
            grain = rng.integers(0, 3, size=big.shape, dtype=np.uint8)
            Image.fromarray(np.where(big > 8, big - grain, big)).save(path, compress_level=6)
        paths.append(path)
    return paths


def child(files: list[str]) -> dict[str, Any]:
    """One measurement, in this (fresh) process; settings come from the environment."""
    from shared.db.models import utcnow
    from shared.settings import get_settings
    from shared.storage import get_storage
    from worker.pipeline import Claimed, analyse_and_store, get_model

    settings = get_settings()
    model = get_model()
    after_load = _rss_mib()
    peak_before = _status_mib("VmHWM")
    items = [Claimed(f"scan-{i}", "png", None, Path(f).read_bytes(), "image/png", utcnow())
             for i, f in enumerate(files)]
    with_data = _rss_mib()
    peak_sampled = with_data
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_sampled
        while not done.is_set():
            peak_sampled = max(peak_sampled, _rss_mib())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    outcomes = analyse_and_store(items, model, get_storage())
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    return {
        "decode_max_side": settings.decode_max_side,
        "decode_memory_mib": settings.decode_memory_bytes / 2**20,
        "worker_threads": settings.worker_threads, "images": len(items),
        "upload_mib_total": round(sum(len(i.data) for i in items) / 2**20, 1),
        "rss_after_model_load_mib": round(after_load, 1),
        "peak_rss_before_batch_mib": round(peak_before, 1),
        "peak_rss_during_batch_sampled_mib": round(peak_sampled, 1),
        "peak_rss_process_mib": round(_status_mib("VmHWM"), 1),
        "batch_wall_s": round(wall, 2),
        "outcomes": [{"state": o.state.value, "error_code": o.fields.get("error_code"),
                      "gate": (o.fields.get("gate") or {}).get("code")} for o in outcomes],
    }


def measure(files: list[Path], decode_max_side: int, media: Path) -> dict[str, Any]:
    env = {**os.environ, "DECODE_MAX_SIDE": str(decode_max_side), "MEDIA_DIR": str(media),
           "PYTHONPATH": str(ROOT)}
    for name in ("CLOUDINARY_URL", "CLOUDINARY_CLOUD_NAME", "CLOUDINARY_API_KEY",
                 "CLOUDINARY_API_SECRET"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-m", "bench.huge_images", "--child", *map(str, files)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"measurement failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--full-size-batch", action="store_true",
                        help="also run the whole batch through full-size decoding (~8 GiB)")
    parser.add_argument("--images-dir", type=Path, default=Path(tempfile.gettempdir())
                        / "neuroscan-huge-images")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return

    args.images_dir.mkdir(parents=True, exist_ok=True)
    files = make_images(args.side, args.count, args.images_dir)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as media:
        plan = [("bounded_batch", files, 1024), ("bounded_single", files[:1], 1024),
                ("full_size_single", files[:1], 0)]
        if args.full_size_batch:
            plan.append(("full_size_batch", files, 0))
        for name, chosen, max_side in plan:
            runs[name] = measure(chosen, max_side, Path(media) / name)
            print(name, {k: v for k, v in runs[name].items() if k != "outcomes"}, flush=True)
    result = {
        "what": f"worker peak RSS, {args.count} PNGs of {args.side}x{args.side} in one batch "
                "and one alone (bench/huge_images.py)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "file_mib": [round(p.stat().st_size / 2**20, 1) for p in files],
        "goal_peak_mib": 1536,
        "issue_baseline_mib": ISSUE_BASELINE_MIB,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
