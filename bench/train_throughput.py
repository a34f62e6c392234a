"""Training throughput: the 1.1.0 recipe against the current one, side by side in one run.

    .venv/bin/python -m bench.train_throughput [--repeats 7] [--steps 8]

"before": the 1.1.0 network (batch normalisation in every stage) trained in float32;
"after": the current default network (`batch_norm_from`) in the precision `--precision auto`
picks on this CPU. Both are the real trainer (served network + auxiliary lesion head, AdamW,
both losses), stepped on the same random batch of 64 with `train_on_batch`; the input
pipeline is left out so the ratio is the network's alone. Repeats are interleaved (A, B, A,
B, ...) so drifts in machine load hit both; the ratio of the medians is reported.
Writes bench/results/train_throughput.json.
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

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
BATCH = 64


def _trainer(config, precision: str):  # noqa: ANN001, ANN202 - Keras objects
    import keras

    from research.training.lesion_supervision import lesion_loss, training_model
    from worker.model import build_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        model = build_model(config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    trainer = training_model(model, config.cam_layer)
    trainer.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                    loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          "lesion": lesion_loss})
    return trainer


def measure(repeats: int, steps: int) -> dict:
    import tensorflow as tf

    from research.training.precision import resolve_precision
    from worker.model import ModelConfig

    precision = resolve_precision("auto")
    recipes = {
        "before": (ModelConfig(version="1.1.0", batch_norm_from=0), "float32"),
        "after": (ModelConfig(), precision),
    }
    trainers = {k: _trainer(c, p) for k, (c, p) in recipes.items()}
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 128, 128, 1), dtype=np.float32)
    y = {"logits": rng.integers(0, 4, BATCH), "lesion": np.zeros((BATCH, 16, 16, 3), np.float32)}
    for trainer in trainers.values():  # trace and warm up
        for _ in range(3):
            trainer.train_on_batch(x, y)
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(repeats):
        for key, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(steps):
                trainer.train_on_batch(x, y)
            times[key].append((time.perf_counter() - start) / steps)
    rows = {k: {"precision": recipes[k][1], "batch_norm_from": recipes[k][0].batch_norm_from,
                "step_ms": round(statistics.median(t) * 1e3, 1),
                "images_per_s": round(BATCH / statistics.median(t), 1)} for k, t in times.items()}
    return {
        "method": f"trainer.train_on_batch, batch {BATCH}, {steps} steps per repeat, interleaved "
                  "repeats, median; input pipeline excluded",
        "repeats": repeats, "recipes": rows,
        "speedup": round(rows["after"]["images_per_s"] / rows["before"]["images_per_s"], 3),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(args.repeats, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"recipes": result["recipes"], "speedup": result["speedup"]}, indent=2))


if __name__ == "__main__":
    main()
