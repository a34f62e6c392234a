"""A per-class montage of a generated dataset (rows = classes), for the README."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shared.labels import CLASSES


def make_montage(out_dir: Path, path: Path, cols: int = 8, tile: int = 150, outline: bool = False) -> Path:
    """Tile the first ``cols`` images of each class from ``out_dir`` (a generated dataset)
    into one grayscale PNG at ``path``; with ``outline`` the lesion mask edge is drawn."""
    out_dir, path = Path(out_dir), Path(path)
    records = json.loads((out_dir / "manifest.json").read_text())["images"]
    label_w = 90
    mode = "RGB" if outline else "L"
    sheet = Image.new(mode, (label_w + cols * tile, len(CLASSES) * tile), 0)
    draw = ImageDraw.Draw(sheet)
    for row, cls in enumerate(CLASSES):
        draw.text((6, row * tile + tile // 2 - 6), cls, fill=255 if mode == "L" else (255, 255, 255))
        for col, rec in enumerate([r for r in records if r["label"] == cls][:cols]):
            img = Image.open(out_dir / rec["path"]).convert("L").resize((tile, tile), Image.BILINEAR)
            if outline:
                m = np.asarray(Image.open(out_dir / rec["mask"]).resize((tile, tile))) > 127
                edge = m & ~np.pad(m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:], 1)
                rgb = np.repeat(np.asarray(img)[..., None], 3, -1)
                rgb[edge] = (255, 60, 60)
                img = Image.fromarray(rgb)
            sheet.paste(img, (label_w + col * tile, row * tile))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path
