"""Grad-CAM overhead: (inference + Grad-CAM) / (inference only), at batch 1 and 32.

    .venv/bin/python -m bench.gradcam_overhead [--model-dir models] [--repeats 50]

Both are compiled graphs on the shipped model (`make_predictor`: probabilities only;
`make_explainer`: probabilities + map, what the worker runs). They are timed side by side,
interleaved (A, B, A, B, ...) so drifts in machine load hit both equally; the ratio of the
medians is reported, plus images/s. Writes bench/results/gradcam_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "gradcam_overhead.json"
GOAL = 1.15


def _time(fn, *args) -> float:  # noqa: ANN001, ANN002
    start = time.perf_counter()
    out = fn(*args)
    np.asarray(out[0] if isinstance(out, tuple) else out)  # wait for the result
    return time.perf_counter() - start


def measure(model_dir: Path, name: str, batch_sizes: tuple[int, ...], repeats: int) -> dict:
    import tensorflow as tf

    from worker.model import load_model
    from worker.model.gradcam import make_explainer, make_predictor

    model = load_model(model_dir, name)
    predict = make_predictor(model.model, model.temperature, mirror=model.mirror)
    explain = make_explainer(model.model, model.config.cam_layer, model.temperature, mirror=model.mirror)
    rng = np.random.default_rng(0)
    rows = {}
    for n in batch_sizes:
        x = tf.constant(rng.random((n, model.input_size, model.input_size, 1), dtype=np.float32))
        cls = tf.constant(np.full(n, -1, np.int32))
        for _ in range(3):  # trace and warm up both graphs
            _time(predict, x)
            _time(explain, x, cls)
        t_pred, t_cam = [], []
        for _ in range(repeats):
            t_pred.append(_time(predict, x))
            t_cam.append(_time(explain, x, cls))
        mp, mc = statistics.median(t_pred), statistics.median(t_cam)
        rows[str(n)] = {
            "inference_ms": round(mp * 1e3, 3), "inference_gradcam_ms": round(mc * 1e3, 3),
            "ratio": round(mc / mp, 4),
            "inference_images_per_s": round(n / mp, 1), "gradcam_images_per_s": round(n / mc, 1),
        }
    return {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256,
                  "input_size": model.input_size, "parameters": int(model.model.count_params())},
        "method": "compiled tf.function each; interleaved repeats; median wall time",
        "repeats": repeats, "goal_ratio_max": GOAL, "batches": rows,
        "meets_goal": all(r["ratio"] <= GOAL for r in rows.values()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from shared.settings import get_settings

    settings = get_settings()
    result = measure(args.model_dir or settings.model_dir, args.name or settings.model_name,
                     (1, 32), args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["batches"], indent=2))


if __name__ == "__main__":
    main()
