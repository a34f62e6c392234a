"""End-to-end pipeline throughput on the embedded stack: HTTP upload -> worker -> succeeded.

    .venv/bin/python -m bench.pipeline_throughput [--model-dir models] [--batch 64] [--singles 10]

Starts the real thing (uvicorn + one solo-pool Celery worker on SQLite and the SQLite broker,
local storage) with the shipped model (or, with --tiny, freshly built tiny weights), then
measures (1) single-scan latency, upload to `succeeded`, one at a time, and (2) a batch of
synthetic slices: wall time to all `succeeded` and scans/s. The first scan, which loads the
model, is reported apart. Writes bench/results/pipeline_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "pipeline_throughput.json"


def _tiny_model(out: Path) -> tuple[Path, str]:
    import keras

    from worker.model import ModelConfig, build_model, save_model_files

    keras.utils.set_random_seed(1)
    config = ModelConfig.tiny(name="neuroscan-tiny")
    save_model_files(build_model(config), config, out)
    return out, config.name


def run(model_dir: Path, model_name: str, batch: int, singles: int) -> dict:
    from tests.support.images import brain_png
    from tests.support.stack import running_stack, wait_for_batch, wait_for_scan

    images = [brain_png(1000 + i) for i in range(max(batch, singles) + 1)]
    with tempfile.TemporaryDirectory() as tmp, running_stack(
            Path(tmp), model_dir, backend="embedded", model_name=model_name,
            port_range=(18950, 18999)) as stack, stack.client() as client:
        def submit_one(data: bytes) -> float:
            start = time.perf_counter()
            scan_id = client.post("/v1/scans", files={"file": ("s.png", data, "image/png")}
                                  ).raise_for_status().json()["id"]
            assert wait_for_scan(client, scan_id, timeout_s=600)["state"] == "succeeded"
            return time.perf_counter() - start

        cold = submit_one(images[-1])
        latencies = [submit_one(images[i]) for i in range(singles)]
        start = time.perf_counter()
        files = [("files", (f"b{i}.png", images[i], "image/png")) for i in range(batch)]
        accepted = client.post("/v1/batches", files=files).raise_for_status().json()
        upload_s = time.perf_counter() - start
        done = wait_for_batch(client, accepted["id"], timeout_s=1800)
        wall = time.perf_counter() - start
    assert done["counts"]["succeeded"] == batch, done["counts"]
    return {
        "model": model_name,
        "first_scan_s_incl_model_load": round(cold, 3),
        "single_scan_latency_s": {"median": round(statistics.median(latencies), 3),
                                  "max": round(max(latencies), 3), "n": singles},
        "batch": {"scans": batch, "upload_s": round(upload_s, 3), "wall_s": round(wall, 3),
                  "scans_per_s": round(batch / wall, 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--name", default="neuroscan-cnn")
    parser.add_argument("--tiny", action="store_true", help="use freshly built tiny weights")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--singles", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny or not (args.model_dir / f"{args.name}.card.json").is_file():
            model_dir, name = _tiny_model(Path(tmp))
        else:
            model_dir, name = args.model_dir.resolve(), args.name
        result = run(model_dir, name, args.batch, args.singles)
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
