"""DICOM decoding (pydicom 3): the checks a hospital upload must pass, then one frame as pixels.

Order of checks: readable Part 10 file, not an encapsulated document, modality allowed, no
burned-in annotation (unless configured), pixel data present, transfer syntax decodable,
frame in range, dimensions sane: Rows x Columns against the pixel budget and
Rows x Columns x samples x bits x frames against the pixel data present, from the header alone,
before `pixel_array` allocates anything. One frame is then decoded in its stored form (under
the process's decode memory budget) and shrunk to `max_side` before any float conversion.
Then the Modality LUT (rescale slope/intercept), the VOI
window when the file carries one (else a robust min/max), and MONOCHROME1 inversion.

Compressed syntaxes go through pydicom's pixel plugins: Pillow (JPEG baseline/extended 8-bit,
JPEG 2000), pylibjpeg-openjpeg (JPEG 2000, HTJ2K), pylibjpeg-rle and pydicom itself (RLE),
GDCM (JPEG lossless process 14, JPEG-LS). All are MIT/BSD/Apache-licensed; the GPL
pylibjpeg-libjpeg is deliberately not used. Error messages never quote element values (PHI).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from shared import errors
from shared.anatomy import header_evidence
from shared.errors import InputError
from shared.imaging import (
    DecodedImage,
    check_pixel_budget,
    decode_budget,
    fit_within,
    shrink_array,
)
from shared.settings import Settings, get_settings

NO_PIXEL_DATA = "dicom_no_pixel_data"
UNSUPPORTED_SYNTAX = "dicom_unsupported_transfer_syntax"
MODALITY_NOT_ALLOWED = "dicom_modality_not_allowed"
FRAME_OUT_OF_RANGE = "dicom_frame_out_of_range"
ENCAPSULATED_DOCUMENT = "dicom_encapsulated_document"
BURNED_IN_ANNOTATION = "dicom_burned_in_annotation"
BAD_HEADER = "dicom_bad_header"

# Encapsulated PDF, CDA, STL, OBJ and MTL storage: documents, not images.
_DOCUMENT_SOP_CLASSES = frozenset(f"1.2.840.10008.5.1.4.1.1.104.{n}" for n in range(1, 6))
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dataset(data: bytes, settings: Settings | None = None) -> Any:
    """Parse a Part 10 file; InputError (no values quoted) when it is not one."""
    import pydicom

    _check_deflate_bomb(data, settings or get_settings())
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise InputError(f"The DICOM file could not be read ({type(exc).__name__}).",
                         code=errors.UNDECODABLE) from exc


def _check_deflate_bomb(data: bytes, settings: Settings) -> None:
    """pydicom inflates a Deflated dataset whole and unbounded: measure it first, bounded."""
    import zlib

    # The file meta group starts with its (required) group length, explicit VR little endian.
    if data[132:138] != b"\x02\x00\x00\x00UL":
        return
    start = 144 + int.from_bytes(data[140:144], "little")
    if b"1.2.840.10008.1.2.1.99" not in data[144:start]:
        return
    limit = 8 * settings.max_upload_bytes
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, total = data[start:], 0
    try:
        # A megabyte at a time, counted and dropped: measuring must not be the bomb.
        # Stop at the stream's end: bytes after it stay in `unconsumed_tail` for ever (a
        # trailing pad byte made this loop spin without end, an API hang from one file).
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 20))
            if total > limit:
                raise InputError(f"The deflated DICOM data expands beyond {limit} bytes.",
                                 code=errors.FILE_TOO_LARGE, http_status=413)
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise InputError("The deflated DICOM data is corrupt.", code=errors.UNDECODABLE) from exc


def check_dataset(ds: Any, settings: Settings) -> None:
    """Everything we refuse before touching pixels (shared with de-identification)."""
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class in _DOCUMENT_SOP_CLASSES or "EncapsulatedDocument" in ds:
        raise InputError("The DICOM file is an encapsulated document (for example a PDF), "
                         "not an image.", code=ENCAPSULATED_DOCUMENT)
    allowed = [m.upper() for m in settings.allowed_modalities]
    modality = str(getattr(ds, "Modality", "") or "").upper()
    if allowed and modality not in allowed:
        shown = (modality if modality.isascii() and modality.isalnum() and len(modality) <= 4
                 else "missing or unreadable")
        raise InputError(f"The DICOM modality is {shown}; accepted: {', '.join(allowed)}.",
                         code=MODALITY_NOT_ALLOWED)
    burned_in = str(getattr(ds, "BurnedInAnnotation", "") or "").upper()
    if burned_in == "YES" and not settings.allow_burned_in_annotation:
        raise InputError("The DICOM file declares burned-in annotation (text in the pixels "
                         "may identify the patient); it is refused.", code=BURNED_IN_ANNOTATION)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise InputError("The DICOM file has no pixel data.", code=NO_PIXEL_DATA)


def decode_dicom(data: bytes, *, frame: int | None = None, settings: Settings | None = None,
                 max_side: int | None = None) -> DecodedImage:
    """One frame of a DICOM file as float32 pixels in [0, 1] (the middle frame by default),
    shrunk to at most `max_side` on its longer side (0/None: full size)."""
    settings = settings or get_settings()
    ds = read_dataset(data, settings)
    check_dataset(ds, settings)
    syntax = _check_transfer_syntax(ds)
    n_frames = header_int(ds, "NumberOfFrames", 1, high=1 << 20) or 1
    index = n_frames // 2 if frame is None else frame
    if not 0 <= index < n_frames:
        raise InputError(f"Frame {frame} was asked for; the file has {n_frames} frame(s), "
                         f"numbered 0 to {n_frames - 1}.", code=FRAME_OUT_OF_RANGE)
    frame_bytes = _check_size(ds, settings, n_frames, compressed=syntax_is_compressed(ds))
    source = (header_int(ds, "Columns", 0), header_int(ds, "Rows", 0))
    target = fit_within(source, max_side)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    # The stored frame plus one working copy (a LUT's output, a colour conversion).
    with decode_budget.hold(2 * frame_bytes, settings.decode_memory_bytes):
        arr = _decode_frame(ds, index, n_frames)
        if arr.ndim == 3:
            pixels, windowed = _colour_to_unit(shrink_array(arr, target), ds), False
        else:
            pixels, windowed = _grey_to_unit(arr, ds, index, target)
            if photometric == "MONOCHROME1":  # 0 is white in MONOCHROME1
                pixels = 1.0 - pixels
    meta = {"modality": str(getattr(ds, "Modality", "")), "transfer_syntax": syntax,
            "frames": n_frames, "frame": index, "photometric": photometric,
            "bits_stored": header_int(ds, "BitsStored", 0), "windowed": windowed,
            "anatomy": header_evidence(ds).to_dict()}  # read by the input gate
    return DecodedImage(pixels=np.ascontiguousarray(pixels, dtype=np.float32),
                        format="dicom", meta=meta, source_size=source)


def _check_transfer_syntax(ds: Any) -> str:
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if uid is None:
        raise InputError("The DICOM file names no transfer syntax.", code=UNSUPPORTED_SYNTAX,
                         http_status=415)
    if not uid.is_compressed:
        return str(uid.name)
    if uid == "1.2.840.10008.1.2.4.51" and int(getattr(ds, "BitsStored", 8) or 8) > 8:
        # 12-bit lossy JPEG: only the GPL libjpeg plugin decodes it, and we do not ship that.
        raise InputError("12-bit JPEG Extended DICOM cannot be decoded here; send uncompressed, "
                         "RLE, JPEG lossless or JPEG 2000 data.", code=UNSUPPORTED_SYNTAX,
                         http_status=415)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise InputError(f"The DICOM transfer syntax {uid.name} ({uid}) cannot be decoded "
                         "here; send uncompressed, RLE, JPEG or JPEG 2000 data.",
                         code=UNSUPPORTED_SYNTAX, http_status=415)
    return str(uid.name)


def header_int(ds: Any, keyword: str, default: int, *, low: int = 0,
               high: int = 1 << 31) -> int:
    """An integer attribute, or InputError (no value quoted) when it is malformed or outside
    [low, high]: a hostile header is a 4xx, never a ValueError deep in a decoder."""
    try:
        value = getattr(ds, keyword, None)
        if value is None or value == "":
            return default
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            raise ValueError("multi-valued")
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise ValueError("not an integer")
        result = int(number)
    except (ValueError, TypeError, OverflowError, AttributeError, KeyError) as exc:
        raise InputError(f"The DICOM attribute {keyword} is malformed.",
                         code=BAD_HEADER) from exc
    if not low <= result <= high:
        raise InputError(f"The DICOM attribute {keyword} is out of range.", code=BAD_HEADER)
    return result


def syntax_is_compressed(ds: Any) -> bool:
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return bool(uid is not None and uid.is_compressed)


def _check_size(ds: Any, settings: Settings, n_frames: int, *, compressed: bool) -> int:
    """Refuse before decoding: the header alone says how much memory a frame would take.
    Returns one frame's size in bytes, as stored (before any conversion)."""
    rows = header_int(ds, "Rows", 0, high=65535)
    cols = header_int(ds, "Columns", 0, high=65535)
    samples = header_int(ds, "SamplesPerPixel", 1, low=1, high=4)
    bits = header_int(ds, "BitsAllocated", 0, high=64)
    stored = header_int(ds, "BitsStored", bits, high=64)
    if rows < 1 or cols < 1:
        raise InputError(f"The DICOM header gives {cols}x{rows} pixels.", code=BAD_HEADER)
    if max(rows, cols) > settings.max_image_side:
        raise InputError(f"The image is {cols}x{rows} pixels; no side may exceed "
                         f"{settings.max_image_side}.", code=errors.IMAGE_TOO_LARGE)
    check_pixel_budget(cols, rows, settings)
    if "PixelData" in ds and (bits not in (1, 8, 16, 32) or not 1 <= stored <= bits):
        raise InputError(f"The DICOM header gives {bits} bits allocated and {stored} stored; "
                         "accepted: 1, 8, 16 or 32 allocated.", code=BAD_HEADER)
    per_pixel = max(1, bits // 8) * samples
    frame_bytes = rows * cols * per_pixel
    if not compressed and "PixelData" in ds:
        # Native data: all frames must really be there (a header that claims more pixels than
        # the file carries is malformed, not an image to decode).
        present = len(ds["PixelData"].value or b"")
        needed = math.ceil(rows * cols * samples * n_frames * bits / 8)
        if present < needed:
            raise InputError(f"The DICOM pixel data has {present} bytes; its header describes "
                             f"{needed} (truncated).", code=errors.UNDECODABLE)
    return frame_bytes


def _decode_frame(ds: Any, index: int, n_frames: int) -> np.ndarray:
    from pydicom.pixels import apply_color_lut, pixel_array

    try:
        # Decode only the frame we need: a multi-frame series can be hundreds of slices.
        arr = pixel_array(ds, index=index if n_frames > 1 else None)
        if str(getattr(ds, "PhotometricInterpretation", "")) == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except Exception as exc:
        raise InputError(f"The DICOM pixel data could not be decoded ({type(exc).__name__}).",
                         code=errors.UNDECODABLE) from exc
    return np.asarray(arr)


def _frame_attr(ds: Any, index: int, group_seq: str, keyword: str) -> Any:
    """Top-level attribute, else the enhanced multi-frame functional groups (per-frame first)."""
    if keyword in ds:
        return ds[keyword].value
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = getattr(ds, groups, None)
        if not seq:
            continue
        item = seq[index] if groups.startswith("PerFrame") and index < len(seq) else seq[0]
        inner = getattr(item, group_seq, None)
        if inner and keyword in inner[0]:
            return inner[0][keyword].value
    return None


def _first(value: Any) -> float | None:
    """The first value as a float; None when absent or unreadable (a malformed window or
    rescale value is ignored, as a viewer would, rather than failing the scan)."""
    try:
        if value is None or value == "":
            return None
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (ValueError, TypeError, OverflowError):
        return None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _grey_to_unit(arr: np.ndarray, ds: Any, index: int,
                  target: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """Stored values -> [0, 1]: shrunk first (in their own dtype, or the LUT's), so the float64
    arrays below are at most `target` in size; rescale is linear, so it commutes with that."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        values = np.asarray(shrink_array(apply_modality_lut(arr, ds), target), dtype=np.float64)
    else:
        values = np.asarray(shrink_array(arr, target), dtype=np.float64)
        slope = _finite(_first(_frame_attr(ds, index, "PixelValueTransformationSequence",
                                           "RescaleSlope")))
        intercept = _finite(_first(_frame_attr(ds, index, "PixelValueTransformationSequence",
                                               "RescaleIntercept")))
        values = values * (slope if slope else 1.0) + (intercept or 0.0)
    centre = _finite(_first(_frame_attr(ds, index, "FrameVOILUTSequence", "WindowCenter")))
    width = _finite(_first(_frame_attr(ds, index, "FrameVOILUTSequence", "WindowWidth")))
    if centre is not None and width is not None and width >= 1:
        function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return _window(values, centre, width, function), True
    # No usable window: stretch between robust extremes so a few hot pixels do not dim the slice.
    lo, hi = np.percentile(values, (0.5, 99.5))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values), False
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0), False


def _window(x: np.ndarray, c: float, w: float, function: str) -> np.ndarray:
    """The VOI LUT functions of PS3.3 C.11.2.1.2, mapped to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if function == "LINEAR_EXACT":
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0) if w > 1 else (x >= c) * 1.0


def _colour_to_unit(arr: np.ndarray, ds: Any) -> np.ndarray:
    # pydicom already converted YBR to RGB; scale by the stored bit depth.
    bits = header_int(ds, "BitsStored", 8, high=64) or 8
    if str(getattr(ds, "PhotometricInterpretation", "")) == "PALETTE COLOR":
        bits = 16 if arr.dtype.itemsize > 1 else 8
    return np.clip(arr.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
