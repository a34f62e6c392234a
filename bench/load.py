"""Concurrent clients against one API process and one worker: the README's load table, re-measured.

    .venv/bin/python -m bench.load [--clients 4 8 16 32 64] [--duration 15] [--stacks embedded pg]
                                   [--mix upload|mixed]

For each stack (embedded: SQLite + SQLite broker + local disk; pg: PostgreSQL + Redis +
the Cloudinary stand-in), starts uvicorn and a solo-pool Celery worker with tiny weights
(tests/support/stack.py, loopback only), then for each client count runs N concurrent
clients for `--duration` seconds (`--mix upload`: all post one 62 KB-class JPEG after another,
as in the issue; `mixed`: half upload, a quarter read scans, a quarter hold SSE streams) and
waits until every accepted scan is final. Writes bench/results/load.json.
PostgreSQL (TEST_PG_ADMIN_URL) and Redis (TEST_REDIS_URL) must be running for `pg`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "load.json"


def _tiny_model(out: Path) -> tuple[Path, str]:
    import keras

    from worker.model import ModelConfig, build_model, save_model_files

    keras.utils.set_random_seed(1)
    config = ModelConfig.tiny(name="neuroscan-tiny")
    save_model_files(build_model(config), config, out)
    return out, config.name


def _image() -> bytes:
    """A 384x384 synthetic slice as JPEG, about the size of the issue's 62 KB file."""
    from tests.support.images import brain_jpeg

    return brain_jpeg(3, size=384)


def run_stack(backend: str, clients: list[int], duration_s: float, mix: str,
              model_dir: Path, model_name: str, root: Path) -> list[dict]:
    from tests.support.load import run_load, wait_until_final
    from tests.support.stack import running_stack

    image = _image()
    rows = []
    with running_stack(root / backend, model_dir, backend=backend, model_name=model_name,
                       port_range=(19400, 19499)) as stack:
        for n in clients:
            key = stack.new_key(f"bench-{backend}-{n}")
            report = asyncio.run(run_load(stack.base_url, key, image, clients=n,
                                          duration_s=duration_s, mix=mix))
            t0 = time.monotonic()
            counts = asyncio.run(wait_until_final(stack.base_url, key, timeout_s=600))
            row = {"backend": backend, **report.summary(), "image_bytes": len(image),
                   "drain_s": round(time.monotonic() - t0, 1), "final_counts": counts}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--stacks", nargs="+", default=["embedded", "pg"])
    parser.add_argument("--mix", choices=["upload", "mixed"], default="upload")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, model_name = _tiny_model(root / "model")
        rows = []
        for backend in args.stacks:
            rows += run_stack(backend, args.clients, args.duration, args.mix, model_dir,
                              model_name, root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "load", "mix": args.mix, "duration_s": args.duration,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "note": "one uvicorn process and one solo-pool Celery worker (tiny weights) on the "
                "same machine; loopback only",
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
