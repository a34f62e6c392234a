"""What every report (PDF, FHIR, DICOM SR, the web page) says around a result, in one place:
the disclaimer, the confidence bands, and the model card's figures, read as plain JSON beside
the weights (never TensorFlow here)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.settings import Settings, get_settings

DISCLAIMER = ("For research use only. Not for diagnostic use. All results must be verified by "
              "a board-certified radiologist.")


def read_model_card(name: str | None = None, settings: Settings | None = None) -> dict[str, Any] | None:
    """`<MODEL_DIR>/<name>.card.json`, or None when it is missing or unreadable."""
    settings = settings or get_settings()
    path = Path(settings.model_dir) / f"{name or settings.model_name}.card.json"
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def flat_metrics(card: dict[str, Any] | None, limit: int = 16) -> list[tuple[str, str]]:
    """The card's metrics as (name, value) rows: numbers only, nested dicts one dot deep each."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool) or len(rows) >= limit:
            return
        if isinstance(value, (int, float)):
            rows.append((prefix, f"{value:.4g}" if isinstance(value, float) else str(value)))
        elif isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)

    walk("", (card or {}).get("metrics") or {})
    return rows


# The confidence bands the clinic acts on (the product's triage policy), highest first:
# (key, lowest confidence in the band, name). The web page reads them from `GET /v1/meta`.
CONFIDENCE_BANDS: tuple[tuple[str, float, str], ...] = (
    ("high", 0.90, "High"),
    ("review", 0.70, "Review"),
    ("expert", 0.0, "Expert review required"),
)


def confidence_band(confidence: float | None) -> str:
    """High (>= 0.90), Review (0.70-0.90), Expert review required (< 0.70)."""
    if confidence is None:
        return "Not applicable"
    return next((name for _, lowest, name in CONFIDENCE_BANDS if confidence >= lowest), CONFIDENCE_BANDS[-1][2])


def as_plain_dict(obj: Any) -> dict[str, Any]:
    """A result as reports read it: a pydantic model, a mapping or a plain object's fields."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    return dict(obj) if isinstance(obj, Mapping) else dict(vars(obj))
