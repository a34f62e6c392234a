"""DICOM decoding (pydicom 3). A first version: uncompressed MR slices.

Extended by the hospital-integration work (compressed syntaxes, multi-frame, modality and
document checks, de-identification lives in shared/deid.py)."""

from __future__ import annotations

import io

import numpy as np

from shared import errors
from shared.errors import InputError
from shared.imaging import DecodedImage


def decode_dicom(data: bytes, *, frame: int | None = None) -> DecodedImage:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise InputError(f"The DICOM file could not be read: {exc}.", code=errors.UNDECODABLE) from exc
    if "PixelData" not in ds:
        raise InputError("The DICOM file has no pixel data.", code="dicom_no_pixel_data")
    arr = ds.pixel_array.astype(np.float32)
    if arr.ndim == 3 and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[frame if frame is not None else arr.shape[0] // 2]
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        arr = arr.max() - arr
    lo, hi = float(arr.min()), float(arr.max())
    pixels = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return DecodedImage(pixels=pixels.astype(np.float32), format="dicom",
                        meta={"modality": str(getattr(ds, "Modality", ""))})
