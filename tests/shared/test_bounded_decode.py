"""Bounded decoding: dimensions from the header against the pixel budget before any
pixel is decoded; images shrunk while they are decoded (JPEG draft, PNG and DICOM reduced in
their stored form) to the same picture a full decode would give; malformed DICOM headers are
clear 4xx; the decode memory budget makes large decodes wait; and a fresh process decoding a
large PNG or DICOM through the bounded path grows by about its stored pixels, not by the
full-size float copies the old path made.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared import errors
from shared.dicom import BAD_HEADER
from shared.errors import InputError
from shared.imaging import _MemoryBudget, decode_and_check, decode_image, fit_within
from tests.support.dicomkit import brain_like, mr_dataset, to_bytes
from tests.support.images import brain_slice, encode
from tests.support.inprocess import settings_env

ROOT = Path(__file__).resolve().parents[2]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def grey_png(width: int, height: int) -> bytes:
    """A large grey PNG built row by row (fast): a bright disc on black."""
    comp = zlib.compressobj(1)
    parts = []
    xx = np.arange(width) - width / 2
    for y in range(height):
        inside = xx**2 + (y - height / 2) ** 2 < (0.4 * min(width, height)) ** 2
        row = np.where(inside, 120 + (y * 7 + np.arange(width)) % 50, 0).astype(np.uint8)
        parts.append(comp.compress(b"\0" + row.tobytes()))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def _reference(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A full-size decode shrunk afterwards: what the bounded path must agree with."""
    return np.asarray(Image.fromarray(pixels.astype(np.float32), "F")
                      .resize(size, Image.Resampling.BOX), dtype=np.float32)


def test_fit_within_keeps_the_aspect_and_never_enlarges() -> None:
    assert fit_within((8000, 4000), 1024) == (1024, 512)
    assert fit_within((300, 200), 1024) == (300, 200)
    assert fit_within((8000, 8000), 0) == (8000, 8000)


def test_pixel_budget_refuses_from_the_header_before_decoding() -> None:
    data = grey_png(600, 600)
    with settings_env(max_image_pixels=str(500 * 500)), pytest.raises(InputError) as err:
        decode_image(data, max_side=128)
    assert err.value.code == errors.IMAGE_TOO_LARGE and "600x600" in err.value.message


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "I;16", "1"])
def test_png_shrunk_while_decoding_is_the_same_picture(mode: str) -> None:
    base = brain_slice(3, size=512)
    if mode == "I;16":
        data = encode(base.astype(np.uint16) * 257)
    else:
        buf = io.BytesIO()
        Image.fromarray(base).convert(mode).save(buf, "PNG")
        data = buf.getvalue()
    full = decode_image(data)
    small = decode_image(data, max_side=128)
    assert small.pixels.shape == (128, 128) and small.source_size == (512, 512) and small.shrunk
    assert small.pixels.dtype == np.float32 and not small.is_color
    gap = np.abs(small.pixels - _reference(full.pixels, (128, 128)))
    assert float(gap.mean()) < (0.05 if mode == "1" else 0.01), float(gap.mean())


def test_jpeg_is_decoded_at_a_reduced_scale() -> None:
    data = encode(np.asarray(Image.fromarray(brain_slice(4, size=512)).resize((2048, 2048))),
                  "JPEG", quality=90)
    full = decode_image(data, max_side=0)
    small = decode_image(data, max_side=256)
    assert small.pixels.shape == (256, 256) and small.source_size == (2048, 2048)
    assert small.meta["mode"] == "L"
    assert float(np.abs(small.pixels - _reference(full.pixels, (256, 256))).mean()) < 0.01


def test_the_api_check_judges_the_files_own_size_not_the_shrunk_pixels() -> None:
    data = grey_png(2000, 400)  # 5:1, decoded shrunk to 256x51 for the check
    with pytest.raises(InputError) as err:
        decode_and_check(data)
    assert err.value.code == errors.BAD_ASPECT_RATIO and "2000x400" in err.value.message
    ok = decode_and_check(grey_png(1200, 1000))
    assert ok.format == "png" and ok.source_size == (1200, 1000)
    jpeg = decode_and_check(encode(brain_slice(5, size=512), "JPEG"))
    assert jpeg.format == "jpeg" and jpeg.source_size == (512, 512)


def _interlaced_png(width: int, height: int, truncate: int = 0) -> bytes:
    """An Adam7-interlaced grey PNG (Pillow cannot write one), built pass by pass."""
    from shared.imaging import _ADAM7

    raw = b""
    for r0, c0, dr, dc in _ADAM7:
        n_rows, n_cols = len(range(r0, height, dr)), len(range(c0, width, dc))
        if n_rows and n_cols:
            raw += (b"\0" + b"\x40" * n_cols) * n_rows
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    idat = zlib.compress(raw[:len(raw) - truncate])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


@pytest.mark.parametrize("name", ["interlaced", "interlaced-truncated", "unknown-filter",
                                  "extra-data", "no-palette"])
def test_the_png_stream_check_agrees_with_the_decoder(name: str) -> None:
    from shared.imaging import check_png

    good = _interlaced_png(97, 65)
    data = {"interlaced": good, "interlaced-truncated": _interlaced_png(97, 65, truncate=30),
            "unknown-filter": _chunked_png(b"\x07" + b"\0" * 80, 80, 1),
            "extra-data": _chunked_png(b"\0" + b"\0" * 80 + b"spare", 80, 1),
            "no-palette": _chunked_png(b"\0" + b"\0" * 80, 80, 1, colour=3)}[name]
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
        pillow_ok = True
    except Exception:
        pillow_ok = False
    try:
        size = check_png(data)
        ours_ok = True
        assert size == (97, 65)
    except InputError as exc:
        assert exc.code == errors.UNDECODABLE
        ours_ok = False
    assert ours_ok == (name == "interlaced")
    if name in ("interlaced", "interlaced-truncated"):  # stricter than Pillow otherwise
        assert ours_ok == pillow_ok, (name, pillow_ok)


def _chunked_png(raw: bytes, width: int, height: int, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def test_dicom_is_shrunk_before_any_float_conversion() -> None:
    pixels = np.kron(brain_like(96), np.ones((10, 20)))  # 960 rows x 1920 columns
    data = to_bytes(mr_dataset(pixels))
    full = decode_image(data, max_side=0)
    assert decode_image(data).pixels.shape == (512, 1024)  # DECODE_MAX_SIDE by default
    small = decode_image(data, max_side=480)
    assert full.pixels.shape == (960, 1920) and small.pixels.shape == (240, 480)
    assert small.source_size == (1920, 960) and small.meta["frames"] == 1
    assert float(np.abs(small.pixels - _reference(full.pixels, (480, 240))).mean()) < 0.01


def _raw(ds: object, keyword: str, vr: str, value: bytes) -> object:
    """Write an attribute's bytes as they are (pydicom would refuse to encode them)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(tag_for_keyword(keyword))
    value += b" " * (len(value) % 2)
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[attr-defined]
    return ds


MALFORMED_DICOM = {
    "frames-not-a-number": ("NumberOfFrames", "IS", b"abc", BAD_HEADER),
    "frames-negative": ("NumberOfFrames", "IS", b"-5", BAD_HEADER),
    "frames-absurd": ("NumberOfFrames", "IS", b"99999999", BAD_HEADER),
    "frames-more-than-present": ("NumberOfFrames", "IS", b"40", errors.UNDECODABLE),
    "rows-zero": ("Rows", "US", b"\0\0", BAD_HEADER),
    "rows-two-values": ("Rows", "US", b"\x01\0\x02\0", BAD_HEADER),
    "bits-allocated-13": ("BitsAllocated", "US", b"\x0d\0", BAD_HEADER),
    "samples-per-pixel-7": ("SamplesPerPixel", "US", b"\x07\0", BAD_HEADER),
    "photometric-nonsense": ("PhotometricInterpretation", "CS", b"RAINBOW", errors.UNDECODABLE),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_DICOM))
def test_malformed_dicom_headers_are_clear_input_errors(name: str) -> None:
    keyword, vr, value, code = MALFORMED_DICOM[name]
    data = to_bytes(_raw(mr_dataset(), keyword, vr, value))  # type: ignore[arg-type]
    with pytest.raises(InputError) as err:
        decode_image(data, max_side=256)
    assert err.value.code == code, err.value.message


@pytest.mark.parametrize("keyword,value", [("WindowCenter", b"abc"), ("WindowWidth", b"NaN"),
                                           ("RescaleSlope", b"inf"), ("RescaleIntercept", b"x")])
def test_unreadable_window_and_rescale_values_are_ignored(keyword: str, value: bytes) -> None:
    ds = mr_dataset()
    ds.WindowCenter, ds.WindowWidth, ds.RescaleSlope, ds.RescaleIntercept = 30000, 40000, 1, 0
    img = decode_image(to_bytes(_raw(ds, keyword, "DS", value)))  # type: ignore[arg-type]
    assert img.pixels.shape == (96, 96) and np.isfinite(img.pixels).all()
    assert float(img.pixels.min()) >= 0.0 and float(img.pixels.max()) <= 1.0


def test_the_memory_budget_makes_a_large_decode_wait_for_the_others() -> None:
    budget = _MemoryBudget()
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with budget.hold(70, 100):
            first_in.set()
            time.sleep(0.2)
            order.append("first done")

    def second() -> None:
        first_in.wait()
        with budget.hold(70, 100):  # 70 + 70 > 100: waits for the first
            order.append("second in")

    def huge() -> None:
        first_in.wait()
        with budget.hold(10**9, 100):  # larger than the budget: alone, never refused
            order.append("huge in")

    threads = [threading.Thread(target=f) for f in (first, second, huge)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert order[0] == "first done" and sorted(order[1:]) == ["huge in", "second in"]
    assert budget.held == 0


# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
_PEAK = """
import json, re, sys
from pathlib import Path
import pydicom.pixels  # imported before measuring: modules are not pixels
from shared.imaging import decode_image
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1])
data = Path(sys.argv[1]).read_bytes()
before = hwm()
img = decode_image(data, max_side=int(sys.argv[2]))
print(json.dumps({"grown_mib": (hwm() - before) / 1024, "shape": list(img.pixels.shape)}))
"""


_CHECK_PEAK = _PEAK.replace("img = decode_image(data, max_side=int(sys.argv[2]))",
                            "img = decode_and_check(data)").replace(
    "from shared.imaging import decode_image", "from shared.imaging import decode_and_check"
).replace('"shape": list(img.pixels.shape)', '"size": list(img.source_size)')


def _rgba_png(width: int, height: int) -> bytes:
    comp = zlib.compressobj(1)
    row = b"\0" + bytes(range(256)) * (width * 4 // 256) + b"\0" * (width * 4 % 256)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _peak_growth(data: bytes, max_side: int, tmp_path: Path) -> dict[str, object]:
    path = tmp_path / f"image-{max_side}"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(max_side)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_a_fresh_process_grows_by_the_stored_pixels_not_by_float_copies(tmp_path: Path) -> None:
    png = grey_png(4000, 4000)  # 16 MB of stored 8-bit pixels; 64 MB as float32
    bounded = _peak_growth(png, 1024, tmp_path)
    full = _peak_growth(png, 0, tmp_path)
    assert bounded["shape"] == [1024, 1024] and full["shape"] == [4000, 4000]
    assert bounded["grown_mib"] < 48, bounded  # 16 MB decoded + small working copies
    assert full["grown_mib"] > 64, full  # the old path: at least one full-size float array
    # The API's check of a PNG decodes nothing: an RGBA 6000x6000 (137 MB of pixels) costs
    # about the stream check's megabyte.
    rgba = _rgba_png(6000, 6000)
    path = tmp_path / "rgba.png"
    path.write_bytes(rgba)
    out = subprocess.run([sys.executable, "-c", _CHECK_PEAK, str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    checked = json.loads(out.stdout)
    assert checked["size"] == [6000, 6000] and checked["grown_mib"] < 16, checked
    dicom = to_bytes(mr_dataset(np.kron(brain_like(100), np.ones((30, 30)))))  # 3000^2 x 16 bit
    bounded = _peak_growth(dicom, 1024, tmp_path)
    full = _peak_growth(dicom, 0, tmp_path)
    # The file's pixel data (17 MB) held by pydicom, the decoded frame, 1024^2 float64 working
    # arrays; the old path made 3000^2 float64 ones (69 MB each).
    assert bounded["shape"] == [1024, 1024] and bounded["grown_mib"] < 80, bounded
    assert full["grown_mib"] > 2 * bounded["grown_mib"], (full, bounded)


def test_the_worker_draws_a_large_png_in_the_decoded_frame_with_a_preview(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """Through the worker's own batch path (real tiny model): a PNG larger than
    DECODE_MAX_SIDE is analysed in the shrunk frame and gets a stored preview, which the PDF
    report then draws from; a small PNG keeps its original as its preview."""
    from shared.db.models import utcnow
    from shared.storage import LocalStorage
    from tests.conftest import TINY_MODEL_NAME
    from worker.model import load_model
    from worker.pipeline import Claimed, analyse_and_store

    big = encode(np.asarray(Image.fromarray(brain_slice(7, size=512)).resize((1500, 1500))))
    storage = LocalStorage(tmp_path, secret_key="bounded-decode-test")
    items = [Claimed("big", "png", None, big, "image/png", utcnow()),
             Claimed("small", "png", None, encode(brain_slice(8)), "image/png", utcnow())]
    with settings_env(decode_max_side="512"):
        outcomes = {o.scan_id: o for o in analyse_and_store(
            items, load_model(tiny_model_dir, TINY_MODEL_NAME), storage)}
    big_out, small_out = outcomes["big"].fields, outcomes["small"].fields
    assert outcomes["big"].state.value == "succeeded", big_out
    assert "preview_ref" in big_out and "preview_ref" not in small_out
    with Image.open(io.BytesIO(storage.get(big_out["preview_ref"]))) as preview:
        assert preview.size == (512, 512)
    with Image.open(io.BytesIO(storage.get(big_out["heatmap_ref"]))) as heatmap:
        assert heatmap.size == (512, 512)
    with Image.open(io.BytesIO(storage.get(small_out["heatmap_ref"]))) as heatmap:
        assert heatmap.size == (256, 256)  # within the limit: the original's frame
