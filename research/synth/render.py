"""Label map -> MRI-looking image, with SynthSeg-style domain randomisation.

Contrasts are drawn around T1, contrast-enhanced T1, T2 and FLAIR looks (plus some
fully random ones); tissue boundaries are soft (blurring the label-wise intensity image
equals blurring the one-hot maps before mixing) and carry fine correlated texture.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from .anatomy import N_TISSUES
from .framing import smooth_field
from .lesions import ROLES

#          bg   csf  vent gm   wm   ecsf bone soft fat  eye  vessel
_PRESETS = {
    "t1c": ([0.0, .10, .10, .40, .50, .10, .05, .36, .85, .12, .85],
            {"oedema": .32, "nonenh": .30, "enh": .82, "necrosis": .12, "menin": .78, "pit": .55}),
    "t1": ([0.0, .10, .10, .42, .58, .10, .05, .36, .85, .12, .22],
           {"oedema": .34, "nonenh": .33, "enh": .45, "necrosis": .14, "menin": .44, "pit": .43}),
    "t2": ([0.0, .90, .92, .55, .40, .90, .05, .30, .62, .90, .06],
           {"oedema": .78, "nonenh": .72, "enh": .58, "necrosis": .88, "menin": .56, "pit": .55}),
    "flair": ([0.0, .08, .08, .56, .44, .08, .05, .32, .60, .10, .10],
              {"oedema": .80, "nonenh": .76, "enh": .66, "necrosis": .30, "menin": .60, "pit": .56}),
}
PRESET_NAMES = ("t1c", "t1", "t2", "flair")
PRESET_P = (0.45, 0.15, 0.25, 0.15)  # the target data are mostly post-contrast T1
# Lesion roles are compared against these tissues to keep the tumour visible.
_REFERENCE = {"oedema": 4, "nonenh": 4, "enh": 4, "necrosis": 4, "menin": 3, "pit": 3}


def sample_contrast(rng: np.random.Generator, kind: str) -> tuple[str, np.ndarray, dict]:
    """Per-tissue and per-lesion-role mean intensities for one image."""
    if rng.random() < 0.08:
        name = "random"
        mu = rng.uniform(0.05, 1.0, N_TISSUES)
        mu[0] = rng.uniform(0.0, 0.08)
        roles = {r: float(rng.uniform(0.05, 1.0)) for r in ROLES}
    else:
        name = PRESET_NAMES[rng.choice(4, p=PRESET_P)]
        base, rl = _PRESETS[name]
        mu = np.clip(np.array(base) + rng.normal(0, 0.05, N_TISSUES), 0.0, 1.0)
        mu[0] = rng.uniform(0.0, 0.04)
        # Grey/white contrast is often low on post-contrast scans: shrink it at random.
        mid = (mu[3] + mu[4]) / 2
        k = rng.uniform(0.3, 1.1)
        mu[3], mu[4] = mid + (mu[3] - mid) * k, mid + (mu[4] - mid) * k
        mu[[2, 5]] = mu[1] + rng.normal(0, 0.02, 2)
        roles = {r: float(np.clip(v + rng.normal(0, 0.07), 0.02, 1.0)) for r, v in rl.items()}
        if kind == "pituitary" and rng.random() < 0.3:  # sometimes avidly enhancing
            roles["pit"] = float(np.clip(roles["pit"] + 0.2, 0, 1))
        if name == "t1c" and rng.random() < 0.4:
            # Dark post-contrast exports (generator 1.3): scalp fat, vessels and enhancement
            # set the window, so the brain and non-enhancing tissue sit low in the range.
            # Real gliomas missed as "notumor" were such slices.
            f = rng.uniform(0.5, 0.85)
            mu[[1, 2, 3, 4, 5]] *= f
            for r in ("oedema", "nonenh", "necrosis"):
                roles[r] *= f
            name = "t1c-dark"
    for r, ref in _REFERENCE.items():  # a tumour that matches its surroundings is label noise
        if r in ("oedema", "necrosis"):
            continue
        gap = roles[r] - mu[ref]
        if abs(gap) < 0.14:
            roles[r] = float(np.clip(mu[ref] + (0.14 if gap >= 0 else -0.14), 0.02, 1.0))
            if abs(roles[r] - mu[ref]) < 0.13:
                roles[r] = float(mu[ref] + 0.14 if mu[ref] < 0.8 else mu[ref] - 0.14)
    # A ring-enhancing glioma shows a ring: its necrotic core differs from the rim. The
    # presets always do; fully random draws did not, and drew ring gliomas as homogeneous
    # masses (the 1.2.0 model read 35% of random-contrast gliomas wrong).
    gap = roles["necrosis"] - roles["enh"]
    if abs(gap) < 0.14:
        side = 1.0 if (gap >= 0 and roles["enh"] < 0.8) or roles["enh"] < 0.2 else -1.0
        roles["necrosis"] = float(np.clip(roles["enh"] + side * 0.14, 0.02, 1.0))
    return name, mu, roles


# T1 (0..255) of CSF, GM and WM in the template, where the brain's transfer curve bends.
_T1_KNOTS = np.array([0.0, 38.0, 84.0, 110.0, 160.0], np.float32)
_T1_MEANS = np.array([0, 46, 39, 83, 109, 27, 26, 75, 155, 38, 128], np.float32) / 255.0


def render_tissues(rng, labels, t1, mu, native, z) -> np.ndarray:
    """Tissue image with partial volume, per-tissue correlated texture and real detail.

    Where the brain is untouched (``native``), intensities come from the template's own T1
    through a random piecewise-linear transfer curve pinned at the CSF/GM/WM means: this
    keeps the real partial volume and fine anatomy instead of flat label patches.
    Elsewhere the label's mean is used, with the T1's within-tissue detail added."""
    shape = labels.shape
    knots_out = np.array([mu[1], mu[1], mu[3], mu[4], mu[4] + 0.5 * (mu[4] - mu[3])], np.float32)
    t1f = t1.astype(np.float32)
    img = np.where(native, np.interp(t1f, _T1_KNOTS, knots_out).astype(np.float32), mu[labels])
    resid = np.clip(t1f / 255.0 - _T1_MEANS[labels], -0.15, 0.15)
    img += rng.uniform(0.1, 0.5) * resid * (~native & (labels > 0))
    sigma_tex = rng.uniform(0.02, 0.08, N_TISSUES).astype(np.float32)
    fine = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), rng.uniform(0.7, 1.6))
    fine /= fine.std() + 1e-6
    tex = 0.7 * fine + 0.5 * smooth_field(rng, shape, 24)[0]
    img *= 1.0 + sigma_tex[labels] * tex
    # Receive-coil fall-off towards the neck (also hides the extruded template end).
    img *= np.clip((z + 20.0) / 40.0, 0.2, 1.0)
    return ndi.gaussian_filter(img, rng.uniform(0.4, 1.0))


def blend_lesion(rng, img, layers, roles) -> np.ndarray:
    """Blend the tumour's soft layers over the tissue image, each with its own texture."""
    for role, alpha in layers:
        tex = smooth_field(rng, img.shape, int(rng.integers(12, 40)))[0]
        val = roles[role] * (1.0 + rng.uniform(0.02, 0.12) * tex)
        img = img * (1.0 - alpha) + alpha * val
    return img


def degrade(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Acquisition effects: slice thickness, resolution, bias, gamma, Rician noise, window."""
    if rng.random() < 0.5:  # thick slices / anisotropic resolution along one in-plane axis
        s = [rng.uniform(0.0, 0.5), rng.uniform(0.0, 0.5)]
        s[int(rng.integers(2))] = rng.uniform(0.8, 2.5)
        img = ndi.gaussian_filter(img, s)
    if rng.random() < 0.25:  # low acquisition matrix, upsampled
        f = rng.uniform(0.45, 0.8)
        small = ndi.zoom(img, f, order=1)
        img = ndi.zoom(small, np.array(img.shape) / np.array(small.shape), order=1)
    bias = np.exp(smooth_field(rng, img.shape, 4)[0] * rng.uniform(0.0, 0.25))
    img = np.clip(img * bias, 0, None)
    img = np.power(img / (img.max() + 1e-6), np.exp(rng.normal(0.0, 0.25)))
    sd = rng.uniform(0.004, 0.045)
    n = rng.standard_normal((2,) + img.shape).astype(np.float32) * sd
    img = np.sqrt((img + n[0]) ** 2 + n[1] ** 2)
    hi = np.percentile(img, rng.uniform(99.0, 99.95)) * rng.uniform(0.85, 1.1)
    lo = rng.uniform(0.0, 0.03) * hi
    out = np.clip((img - lo) / (hi - lo + 1e-6), 0, 1)
    return (out * 255 + 0.5).astype(np.uint8)


def jpeg(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Random JPEG re-compression (many public MRI sets went through it)."""
    if rng.random() >= 0.4:
        return img
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(25, 92)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
