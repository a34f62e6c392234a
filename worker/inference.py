"""The one batched inference + explanation path (worker, offline `predict`, evaluation).

`analyse` gates every image, preprocesses the accepted ones with the one preprocessing
function, runs a single compiled graph that yields calibrated probabilities and the Grad-CAM
map, maps each map back to its image's own frame and renders the PNGs.

The per-image work before and after the model pass (gate rules, preprocessing, mapping back,
rendering) runs on a small thread pool (`WORKER_THREADS`): OpenCV, Pillow and NumPy's large
kernels release the GIL, so images are spread over the cores while each kernel runs
single-threaded (docs/performance.md has the profile).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.explanation import TUMOUR_CLASS, explained_label
from shared.imaging import DecodedImage
from shared.labels import CLASSES
from shared.labels import class_index as index_of
from shared.preprocessing import preprocess
from shared.settings import Settings, get_settings
from worker import ood, overlay
from worker.gate import GateOutcome, assess
from worker.metrics import stage
from worker.model.gradcam import make_explainer, make_logits
from worker.model.gradcam_postprocess import to_original_frame
from worker.model.loader import LoadedModel
from worker.parallel import parallel_map

MAX_BATCH = 64  # bounds peak memory for very large batches; results do not depend on it

# None: each image's predicted class; a class name or index for all; or one entry per image;
# TUMOUR_CLASS (-2): the most likely tumour class (the predicted one unless that is notumor).
ClassRequest = int | str | Sequence[int | str | None] | None

log = logging.getLogger(__name__)


def configure_threads(settings: Settings | None = None) -> None:
    """TensorFlow's and OpenCV's thread counts, set once before the first TensorFlow op.

    A worker shares its machine (the API, the database, other workers): TensorFlow's
    intra-op pool gets TF_INTRA_OP_THREADS (0: one per core), its inter-op pool
    TF_INTER_OP_THREADS (the Grad-CAM graph is one chain of large ops; a second pool of
    runnable ops only oversubscribes the cores), and OpenCV runs single-threaded because
    `parallel_map` already spreads images over WORKER_THREADS."""
    import cv2
    import tensorflow as tf

    settings = settings or get_settings()
    cv2.setNumThreads(1)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(settings.tf_intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(settings.tf_inter_op_threads)
    except RuntimeError:  # TensorFlow already ran an op in this process: keep its pools
        log.warning("TensorFlow was initialised before its thread counts could be set")


@dataclass(frozen=True)
class Analysis:
    gate: GateOutcome
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    cam: np.ndarray | None = None  # HxW float32 in [0, 1], in the ORIGINAL image frame
    explained: str | None = None  # the class the map was drawn for
    overlay_png: bytes | None = None
    heatmap_png: bytes | None = None


def explainer_for(model: LoadedModel):  # noqa: ANN201 - a compiled tf.function
    """The model's compiled Grad-CAM graph, built once per LoadedModel."""
    key = "gradcam"
    if key not in model._explainers:
        model._explainers[key] = make_explainer(model.model, model.config.cam_layer, model.temperature,
                                                mirror=model.mirror,
                                                background_class=index_of("notumor"),
                                                with_features=True)
    return model._explainers[key]


def logits_batch(model: LoadedModel, batch: np.ndarray) -> np.ndarray:
    """Preprocessed (N,S,S,1) -> the served logits (N,C), before temperature (evaluation reads these)."""
    if "logits" not in model._explainers:
        model._explainers["logits"] = make_logits(model.model, mirror=model.mirror)
    fn = model._explainers["logits"]
    chunks = [fn(batch[start:start + MAX_BATCH]).numpy()
              for start in range(0, len(batch), MAX_BATCH)]
    return np.concatenate(chunks or [np.zeros((0, len(CLASSES)), np.float32)])


def _requested(class_index: ClassRequest, n: int) -> np.ndarray:
    """Per-image class indices; -1 asks for the predicted class."""
    if class_index is None or isinstance(class_index, int | str | np.integer):
        class_index = [class_index] * n
    out = np.array([-1 if c is None else index_of(c) if isinstance(c, str) else int(c)
                    for c in class_index], dtype=np.int32)
    if len(out) != n or out.min(initial=0) < TUMOUR_CLASS or out.max(initial=0) >= len(CLASSES):
        raise ValueError(f"class_index {class_index!r} does not fit {n} images and {len(CLASSES)} classes")
    return out


def run_batch(model: LoadedModel, batch: np.ndarray, class_index: ClassRequest = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed (N,S,S,1) -> (probabilities (N,C), maps (N,S,S)) in the model frame."""
    probs, cams, _ = run_batch_with_features(model, batch, class_index)
    return probs, cams


def run_batch_with_features(model: LoadedModel, batch: np.ndarray, class_index: ClassRequest = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As `run_batch`, plus each image's pooled features (N,F) from the same pass."""
    requested = _requested(class_index, len(batch))
    explain = explainer_for(model)
    probs, cams, feats = [], [], []
    for start in range(0, len(batch), MAX_BATCH):
        chunk = batch[start:start + MAX_BATCH]
        p, c, f = explain(chunk, requested[start:start + MAX_BATCH])
        probs.append(p.numpy())
        cams.append(c.numpy())
        feats.append(f.numpy())
    return np.concatenate(probs), np.concatenate(cams), np.concatenate(feats)


def analyse(images: Sequence[DecodedImage], model: LoadedModel,
            class_index: int | str | None = TUMOUR_CLASS) -> list[Analysis]:
    """One Analysis per image, in order; gate-rejected images carry only their gate outcome.

    By default each map explains a tumour class (`shared.explanation`): the finding, or for a
    "notumor" finding the most likely tumour class, never a map of "no tumour"."""
    def gate_and_prepare(img: DecodedImage) -> tuple[GateOutcome, tuple | None]:
        gate = assess(img)
        return gate, (preprocess(img.pixels, model.input_size) if gate.accepted
                      else None)

    with stage("preprocess"):  # the gate's rules, then the one preprocessing function
        first = parallel_map(gate_and_prepare, images)
    gates = [g for g, _ in first]
    accepted = [i for i, g in enumerate(gates) if g.accepted]
    results: list[Analysis] = [Analysis(gate=g) for g in gates]
    if not accepted:
        return results
    prepared = [first[i][1] for i in accepted]
    with stage("model"):  # one compiled pass for the batch, then the learned gate's distances
        probs, cams, feats = run_batch_with_features(model, np.stack([x for x, _, _ in prepared]),
                                                     class_index)
        learned = ood.gate_for(model)
        distances = learned.distances(feats) if learned is not None else None

    def finish(row: int) -> Analysis:
        i = accepted[row]
        gate = gates[i]
        if distances is not None:
            gate = learned.judge(gate, float(distances[row]))  # type: ignore[union-attr]
            if not gate.accepted:
                return Analysis(gate=gate)
        pixels = images[i].pixels
        _, box, scaled = prepared[row]
        cam = to_original_frame(cams[row], box, pixels.shape[:2])
        top = int(np.argmax(probs[row]))
        probabilities = {c: float(p) for c, p in zip(CLASSES, probs[row], strict=True)}
        if class_index == TUMOUR_CLASS:
            explained = explained_label(probabilities)
        elif class_index is None:
            explained = CLASSES[top]
        else:
            explained = CLASSES[index_of(class_index) if isinstance(class_index, str) else int(class_index)]
        return Analysis(
            gate=gate,
            label=CLASSES[top],
            confidence=float(probs[row, top]),
            probabilities=probabilities,
            cam=cam,
            explained=explained,
            overlay_png=overlay.overlay_png(pixels, cam, scaled),
            heatmap_png=overlay.heatmap_png(cam),
        )

    with stage("overlay"):  # each map back in its image's frame, rendered as PNGs
        for i, analysis in zip(accepted, parallel_map(finish, range(len(accepted))), strict=True):
            results[i] = analysis
    return results
