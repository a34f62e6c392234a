"""`make bench`: the throughput and latency measures side by side in one run; one JSON, one plot, the README table.

    .venv/bin/python -m bench.run [--scans 256] [--singles 30] [--clients 32] [--baseline 6]
                                  [--skip-embedded] [--no-readme]

In one process, one after the other on the same machine:
1. model only: the shipped model's compiled Grad-CAM graph (probabilities + maps + the
   learned gate's features, what the worker runs) at batch 32, images/s;
2. `worker.inference.analyse` in process on 512 px JPEGs at batch 32 (gate, preprocessing,
   model, maps back in the original frame, both PNGs), images/s;
3. the usual public approach: a VGG16 (random weights: speed does not depend on them) at
   224 px, per image `model.predict` then keras-io's eager GradientTape Grad-CAM and an
   overlay, as the keras-io example does it, scans/s;
4. the full stack (tests/support/stack.py "pg": PostgreSQL, Redis, uvicorn, one solo-pool
   Celery worker, Cloudinary through the real SDK against the local stand-in) with the
   shipped model: the first scan, `--singles` single scans one after another (upload ->
   `succeeded` event on the SSE stream), one batch upload of `--scans` slices (upload ->
   all final), then the same number of scans uploaded as single scans by `--clients`
   concurrent clients (throughput, and upload latency while the worker is saturated), and
   the API's and worker's resident memory;
5. the embedded stack (`make run`'s SQLite + SQLite broker + local disk): single scans.

Writes bench/results/bench.json, docs/bench.png (matplotlib, when installed) and the table
between the `bench:` markers in README.md. PostgreSQL and Redis must be running
(scripts/ensure_services.sh, as `make test` does). About 5 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "bench.json"
PLOT = ROOT / "docs" / "bench.png"
README = ROOT / "README.md"
MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")
BATCH = 32


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _dist_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1e3 for v in values_s]
    return {"n": len(ms), "p50_ms": round(_pct(ms, 50), 1), "p90_ms": round(_pct(ms, 90), 1),
            "p99_ms": round(_pct(ms, 99), 1), "max_ms": round(max(ms), 1) if ms else None}


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _slices(n: int, size: int = 512, distinct: int = 16) -> list[bytes]:
    """`n` synthetic 512 px slices as JPEG, cycling through `distinct` of them (the generator
    takes about a second per slice; the service never looks at two scans' bytes together)."""
    from tests.support.images import brain_jpeg

    pool = [brain_jpeg(4000 + i, size=size) for i in range(min(n, distinct))]
    return [pool[i % len(pool)] for i in range(n)]


# --- in process --------------------------------------------------------------------------

def model_and_analyse(model_dir: Path, name: str, repeats: int) -> dict[str, Any]:
    from shared.imaging import decode_image
    from shared.preprocessing import preprocess
    from shared.settings import get_settings
    from tests.support.inprocess import settings_env
    from worker.inference import analyse, configure_threads, run_batch_with_features

    with settings_env(model_dir=str(model_dir), model_name=name):
        configure_threads(get_settings())
        from worker.pipeline import get_model

        model = get_model()
        images = [decode_image(b) for b in _slices(BATCH)]
        x = np.stack([preprocess(img.pixels, model.input_size).image for img in images])
        for _ in range(3):  # trace and warm up
            run_batch_with_features(model, x, -2)
        analyse(images, model)
        t_model, t_analyse = [], []
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both
            t_model.append(_median_s(lambda: run_batch_with_features(model, x, -2), 1))
            t_analyse.append(_median_s(lambda: analyse(images, model), 1))
        m, a = statistics.median(t_model), statistics.median(t_analyse)
    return {"model": {"name": model.name, "version": model.version, "input_size": model.input_size},
            "batch": BATCH, "model_gradcam_images_per_s": round(BATCH / m, 1),
            "model_gradcam_ms_per_image": round(m / BATCH * 1e3, 2),
            "analyse_images_per_s": round(BATCH / a, 1),
            "analyse_ms_per_image": round(a / BATCH * 1e3, 2),
            "image": "512x512 JPEG"}


def usual_approach(n: int) -> dict[str, Any]:
    """VGG16 at 224 px, one image at a time: predict, then keras-io's eager Grad-CAM."""
    import cv2
    import keras
    import tensorflow as tf

    from shared.imaging import decode_image

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, input_shape=(224, 224, 3), classes=4,
                                     classifier_activation="softmax")
    grad_model = keras.models.Model(model.inputs, [model.get_layer("block5_conv3").output,
                                                   model.output])

    def make_gradcam_heatmap(img_array: np.ndarray) -> np.ndarray:  # keras-io, as published
        with tf.GradientTape() as tape:
            last_conv_layer_output, preds = grad_model(img_array)
            pred_index = tf.argmax(preds[0])
            class_channel = preds[:, pred_index]
        grads = tape.gradient(class_channel, last_conv_layer_output)
        pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
        heatmap = last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis]
        heatmap = tf.squeeze(heatmap)
        heatmap = tf.maximum(heatmap, 0) / (tf.math.reduce_max(heatmap) + 1e-7)
        return heatmap.numpy()

    def one(blob: bytes) -> bytes:
        pixels = decode_image(blob).pixels
        rgb = cv2.cvtColor(cv2.resize(pixels, (224, 224)), cv2.COLOR_GRAY2RGB) \
            if pixels.ndim == 2 else cv2.resize(pixels[..., :3], (224, 224))
        x = rgb[np.newaxis].astype(np.float32)
        model.predict(x, verbose=0)  # the classification
        heatmap = make_gradcam_heatmap(x)
        jet = cv2.applyColorMap(np.uint8(255 * cv2.resize(heatmap, (224, 224))), cv2.COLORMAP_JET)
        bgr = np.ascontiguousarray(rgb[..., ::-1], dtype=np.uint8)
        return cv2.imencode(".png", cv2.addWeighted(jet, 0.4, bgr, 0.6, 0))[1].tobytes()

    blobs = _slices(n + 1)
    one(blobs[-1])  # warm up
    t0 = time.perf_counter()
    for blob in blobs[:n]:
        one(blob)
    parameters = int(model.count_params())
    keras.backend.clear_session()  # the bench process goes on to drive the live stacks
    per = (time.perf_counter() - t0) / n
    return {"network": "VGG16 (random weights), 224x224x3", "parameters": parameters,
            "method": "per image: model.predict + keras-io eager GradientTape Grad-CAM + overlay PNG",
            "images": n, "s_per_image": round(per, 3), "scans_per_s": round(1 / per, 4)}


# --- live stacks -------------------------------------------------------------------------

def _rss_mib(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def _final_count(engine: Any, tenant_id: str) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM scan_results WHERE tenant_id = :t "
            "AND state IN ('succeeded', 'failed')"), {"t": tenant_id}).scalar_one())


def _wait_final(engine: Any, tenant_id: str, expected: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while (done := _final_count(engine, tenant_id)) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done}/{expected} final after {timeout_s:.0f}s")
        time.sleep(0.05)
    return time.perf_counter()


def _single_via_sse(client: Any, blob: bytes) -> float:
    """Upload -> the `succeeded` event on the scan's SSE stream, in seconds."""
    t0 = time.perf_counter()
    r = client.post("/v1/scans", files={"file": ("s.jpg", blob, "image/jpeg")})
    r.raise_for_status()
    with client.stream("GET", f"/v1/scans/{r.json()['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                state = line.removeprefix("event: ").strip()
                if state in ("succeeded", "failed"):
                    if state != "succeeded":
                        raise RuntimeError("a bench scan failed")
                    return time.perf_counter() - t0
    raise RuntimeError("stream ended without a final event")


async def _clients(base_url: str, key: str, blobs: list[bytes], clients: int) -> list[float]:
    """`clients` concurrent clients share `blobs`, each posting single scans back to back."""
    import httpx

    queue = list(enumerate(blobs))
    latencies: list[float] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            while queue:
                i, blob = queue.pop()
                t0 = time.perf_counter()
                r = await http.post("/v1/scans", files={"file": (f"c{i}.jpg", blob, "image/jpeg")})
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def _tenant_id(stack: Any, key: str) -> str:
    with stack.client(key) as c:
        return c.get("/v1/me").raise_for_status().json()["tenant"]["id"]


def full_stack(model_dir: Path, name: str, root: Path, scans: int, singles: int,
               clients: int) -> dict[str, Any]:
    from sqlalchemy import create_engine

    from tests.support.stack import running_stack

    blobs = _slices(scans)
    t_start = time.perf_counter()
    with running_stack(root / "pg", model_dir, backend="pg", model_name=name,
                       port_range=(19600, 19699)) as stack, stack.client() as client:
        ready_s = time.perf_counter() - t_start
        engine = create_engine(stack.sync_database_url, pool_size=1)
        first = _single_via_sse(client, blobs[0])
        lat = [_single_via_sse(client, blobs[1 + i % (scans - 1)]) for i in range(singles)]

        key = stack.new_key("bench-batch")
        tenant = _tenant_id(stack, key)
        with stack.client(key, timeout=600) as c:
            t0 = time.perf_counter()
            c.post("/v1/batches", files=[("files", (f"b{i}.jpg", b, "image/jpeg"))
                                         for i, b in enumerate(blobs)]).raise_for_status()
            upload_s = time.perf_counter() - t0
            batch_s = _wait_final(engine, tenant, scans, 1800) - t0

        key = stack.new_key("bench-clients")
        tenant = _tenant_id(stack, key)
        t0 = time.perf_counter()
        uploads = asyncio.run(_clients(stack.base_url, key, blobs, clients))
        clients_s = _wait_final(engine, tenant, scans, 1800) - t0

        procs = {"api": next(p for p in stack._procs if "uvicorn" in p.args),
                 "worker": next(p for p in stack._procs if "celery" in p.args)}
        rss = {k: _rss_mib(p.pid) for k, p in procs.items()}
        engine.dispose()
    return {
        "stack": "PostgreSQL + Redis + Cloudinary SDK against the local stand-in; uvicorn; "
                 "one solo-pool Celery worker",
        "start_to_ready_s": round(ready_s, 2), "first_scan_s": round(first, 3),
        "single_scan_latency": _dist_ms(lat),
        "single_scan_latency_s": [round(v, 4) for v in lat],
        "batch": {"scans": scans, "upload_s": round(upload_s, 2), "wall_s": round(batch_s, 2),
                  "scans_per_s": round(scans / batch_s, 2)},
        "clients": {"clients": clients, "scans": scans, "wall_s": round(clients_s, 2),
                    "scans_per_s": round(scans / clients_s, 2), "upload_latency": _dist_ms(uploads),
                    "upload_latency_s": [round(v, 4) for v in uploads]},
        "rss_mib": rss,
    }


def embedded(model_dir: Path, name: str, root: Path, singles: int) -> dict[str, Any]:
    from tests.support.stack import running_stack

    blobs = _slices(singles + 1)
    with running_stack(root / "embedded", model_dir, backend="embedded", model_name=name,
                       port_range=(19700, 19799)) as stack, stack.client() as client:
        _single_via_sse(client, blobs[-1])
        lat = [_single_via_sse(client, b) for b in blobs[:singles]]
    return {"single_scan_latency": _dist_ms(lat),
            "single_scan_latency_s": [round(v, 4) for v in lat]}


# --- report ------------------------------------------------------------------------------

def ratios(r: dict[str, Any]) -> dict[str, Any]:
    m, fs = r["in_process"], r["full_stack"]
    usual = 1 / r["usual_approach"]["s_per_image"]
    out = {
        "e2e_batch_over_model": round(fs["batch"]["scans_per_s"] / m["model_gradcam_images_per_s"], 3),
        "analyse_over_model": round(m["analyse_images_per_s"] / m["model_gradcam_images_per_s"], 3),
        "clients_over_batch": round(fs["clients"]["scans_per_s"] / fs["batch"]["scans_per_s"], 3),
        "e2e_batch_over_usual": round(fs["batch"]["scans_per_s"] / usual, 1),
        "analyse_over_usual": round(m["analyse_images_per_s"] / usual, 1),
        "model_over_usual": round(m["model_gradcam_images_per_s"] / usual, 1),
    }
    return out


def table(r: dict[str, Any]) -> str:
    m, fs, q = r["in_process"], r["full_stack"], r["ratios"]
    emb = r.get("embedded", {}).get("single_scan_latency", {})
    lat, up = fs["single_scan_latency"], fs["clients"]["upload_latency"]
    rss = fs["rss_mib"]
    rows = [
        (f"end-to-end batch scans/s (PostgreSQL + Redis, {fs['batch']['scans']} scans) "
         "÷ model-only images/s (batch 32, Grad-CAM)",
         f"{fs['batch']['scans_per_s']} ÷ {m['model_gradcam_images_per_s']} = **{q['e2e_batch_over_model']}**",
         "≥ 0.5"),
        ("single scan, upload → `succeeded` event, p50 / p99, full stack, warm",
         f"**{lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} ms** (n={lat['n']})", "≤ 100 / ≤ 250 ms"),
        ("single scan p50, embedded, warm",
         f"**{emb['p50_ms']:.0f} ms**" if emb else "not run", "≤ 300 ms"),
        (f"{fs['clients']['clients']} clients uploading single scans ÷ one batch upload of the same scans",
         f"{fs['clients']['scans_per_s']} ÷ {fs['batch']['scans_per_s']} = **{q['clients_over_batch']}**",
         "≥ 0.8"),
        (f"upload p99 at {fs['clients']['clients']} clients, worker saturated",
         f"**{up['p99_ms']:.0f} ms** (p50 {up['p50_ms']:.0f})", "≤ 100 ms"),
        ("ours end-to-end ÷ VGG16 224 px + eager per-image Grad-CAM, scans/s",
         f"{fs['batch']['scans_per_s']} ÷ {1 / r['usual_approach']['s_per_image']:.3f} = "
         f"**{q['e2e_batch_over_usual']}x** (`analyse()` {q['analyse_over_usual']}x, "
         f"model alone {q['model_over_usual']}x)", "≥ 50x"),
        ("worker / API RSS, steady state",
         f"**{rss['worker']['VmRSS']:.0f} / {rss['api']['VmRSS']:.0f} MiB**", "≤ 600 / ≤ 150 MiB"),
        ("stack start → ready, then first scan",
         f"{fs['start_to_ready_s']} s + {fs['first_scan_s']} s", "worker start → first result ≤ 3 s"),
    ]
    mach = r["machine"]
    loads = [mach["loadavg_start"]] + [r[k]["loadavg_1m"] for k in
                                       ("in_process", "usual_approach", "full_stack", "embedded")
                                       if k in r]
    lines = [f"Measured by `make bench` on {mach['description']} "
             f"({r['measured_at']}; load average {min(loads):.1f}–{max(loads):.1f} during the run: "
             "other work shared the cores, so compare ratios, not absolute figures). "
             "One run, side by side; `bench/results/bench.json` has every figure.", "",
             "| measure | measured | goal |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def write_readme(text: str) -> bool:
    body = README.read_text()
    start, end = MARKERS
    if start not in body or end not in body:
        return False
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    return True


def plot(r: dict[str, Any], out: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    m, fs, u = r["in_process"], r["full_stack"], r["usual_approach"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    names = ["model only\n(Grad-CAM, b32)", "analyse()\nin process", "end-to-end\nbatch",
             f"end-to-end\n{fs['clients']['clients']} clients", "VGG16 +\neager Grad-CAM"]
    values = [m["model_gradcam_images_per_s"], m["analyse_images_per_s"],
              fs["batch"]["scans_per_s"], fs["clients"]["scans_per_s"], 1 / u["s_per_image"]]
    ax1.bar(names, values, color=["#4c72b0", "#55a868", "#c44e52", "#dd8452", "#8c8c8c"])
    ax1.set_yscale("log")
    ax1.set_ylabel("scans (images) per second, log scale")
    ax1.set_title("Throughput")
    for i, v in enumerate(values):
        ax1.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax1.tick_params(axis="x", labelsize=7)
    dists = [("full stack, single scans", fs["single_scan_latency_s"]),
             ("embedded, single scans", r.get("embedded", {}).get("single_scan_latency_s", [])),
             (f"uploads at {fs['clients']['clients']} clients", fs["clients"]["upload_latency_s"])]
    for label, values_s in dists:
        if values_s:
            ms = np.sort(np.asarray(values_s) * 1e3)
            ax2.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=label)
    ax2.set_xscale("log")
    ax2.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xlabel("milliseconds, log scale")
    ax2.set_ylabel("fraction of requests")
    ax2.set_title("Latency (CDF)")
    ax2.legend(fontsize=8)
    rss = fs["rss_mib"]
    ax3.bar(["worker", "API"], [rss["worker"]["VmRSS"], rss["api"]["VmRSS"]], color="#4c72b0")
    ax3.set_ylabel("MiB resident")
    ax3.set_title("Memory, steady state")
    fig.suptitle(f"NeuroScan bench, {r['machine']['description']}, {r['measured_at']}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--name", default="neuroscan-cnn")
    parser.add_argument("--scans", type=int, default=256)
    parser.add_argument("--singles", type=int, default=30)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--baseline", type=int, default=6, help="images for the usual approach")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: redo the ratios, plot and table from this JSON")
    args = parser.parse_args()
    if args.from_json is not None:
        report(json.loads(args.from_json.read_text()), args)
        return

    load0 = os.getloadavg()[0]
    result: dict[str, Any] = {
        "benchmark": "issue 15",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": load0,
                    "description": f"{os.cpu_count()} CPU cores, no GPU ({platform.machine()}, "
                                   f"{platform.system()})"},
    }
    model_dir = args.model_dir.resolve()
    phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("in_process", lambda: model_and_analyse(model_dir, args.name, args.repeats)),
        ("usual_approach", lambda: usual_approach(args.baseline)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        phases.append(("full_stack", lambda: full_stack(model_dir, args.name, Path(tmp),
                                                        args.scans, args.singles, args.clients)))
        if not args.skip_embedded:
            phases.append(("embedded", lambda: embedded(model_dir, args.name, Path(tmp),
                                                        min(args.singles, 20))))
        for key, phase in phases:
            t0 = time.perf_counter()
            result[key] = phase()
            result[key]["phase_s"] = round(time.perf_counter() - t0, 1)
            result[key]["loadavg_1m"] = round(os.getloadavg()[0], 2)
            print(key, json.dumps(result[key]), flush=True)
    report(result, args)


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    result["ratios"] = ratios(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    made_plot = plot(result, args.plot)
    text = table(result)
    if not args.no_readme and write_readme(text):
        print(f"README table updated between {MARKERS[0]} and {MARKERS[1]}")
    print(text)
    print(f"wrote {args.out}" + (f" and {args.plot}" if made_plot else " (no matplotlib: no plot)"))


if __name__ == "__main__":
    main()
