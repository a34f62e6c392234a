"""Decode uploads (PNG, JPEG, DICOM), told apart by their magic bytes, and check them.

The API calls `decode_and_check` before it accepts a file; the worker and the offline
`predict` command call `decode_image` again on the stored bytes. NumPy, Pillow and pydicom
only: no TensorFlow.

Decoding is bounded: the dimensions are read from the header and checked against
the pixel budget before any pixel is decoded; with `max_side`, an image is shrunk while it is
decoded (JPEG: libjpeg decodes at 1/2, 1/4 or 1/8 scale; PNG and DICOM: reduced in their
native 8/16-bit form, never as a full-size float array); and the native pixels that decodes
hold at once in a process are capped by DECODE_MEMORY_BYTES (a larger image waits, then
decodes alone).
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared import errors
from shared.errors import InputError
from shared.settings import Settings, get_settings

ImageFormat = Literal["png", "jpeg", "dicom"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}
# The formats a browser shows as they are (in an <img>); others only through a rendition.
BROWSER_FORMATS: tuple[str, ...] = ("png", "jpeg")

# Pillow refuses images above this many pixels (decompression bombs); our own limit is lower.
Image.MAX_IMAGE_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class DecodedImage:
    """Pixels ready for preprocessing plus what we learned while decoding.

    `pixels` is float32 in [0, 1]: HxW for grayscale, HxWx3 for colour (kept, so the input
    gate can tell colour photographs from MRI)."""

    pixels: np.ndarray
    format: ImageFormat
    meta: dict[str, Any] = field(default_factory=dict)
    # (width, height) of the image as stored in the file, when `pixels` were shrunk.
    source_size: tuple[int, int] | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def source_width(self) -> int:
        return self.source_size[0] if self.source_size else self.width

    @property
    def source_height(self) -> int:
        return self.source_size[1] if self.source_size else self.height

    @property
    def shrunk(self) -> bool:
        """True when `pixels` are smaller than the image in the file."""
        return self.source_size is not None and self.source_size != (self.width, self.height)

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3


def sniff_format(data: bytes) -> ImageFormat | None:
    """The format by magic bytes alone (never by file name or declared content type)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    # DICOM Part 10: a 128-byte preamble, then "DICM".
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def decode_image(data: bytes, *, frame: int | None = None,
                 max_side: int | None = None) -> DecodedImage:
    """Bytes -> DecodedImage, or InputError with a precise code.

    An image longer than `max_side` (default DECODE_MAX_SIDE; 0: full size) is shrunk
    (aspect kept, antialiased) while it is decoded, in bounded memory; `source_size` keeps its
    own size. The default makes the worker, `predict`, training and evaluation see the same
    pixels (one preprocessing path)."""
    if max_side is None:
        max_side = get_settings().decode_max_side
    if not data:
        raise InputError("The file is empty.", code=errors.EMPTY_FILE)
    fmt = sniff_format(data)
    if fmt is None:
        raise InputError(
            "Unsupported file type: send a PNG, JPEG or DICOM image.",
            code=errors.UNSUPPORTED_TYPE,
            http_status=415,
        )
    if fmt == "dicom":
        from shared.dicom import decode_dicom  # pydicom is only loaded when needed

        return decode_dicom(data, frame=frame, max_side=max_side)
    return _decode_raster(data, fmt, max_side)


def check_pixel_budget(width: int, height: int, settings: Settings | None = None) -> None:
    """Refuse, from the header's dimensions alone, an image too large to decode safely (a
    375 KB PNG can expand to 11000x11000 pixels): checked before any pixel is decoded."""
    settings = settings or get_settings()
    if width * height > settings.max_image_pixels or max(width, height) > settings.max_image_side:
        raise InputError(
            f"The image is {width}x{height} pixels; the limit is {settings.max_image_pixels} "
            f"pixels and {settings.max_image_side} per side.", code=errors.IMAGE_TOO_LARGE)


def fit_within(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) shrunk, aspect kept, so that neither side exceeds `max_side` (0/None:
    unchanged; never enlarged)."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    f = max_side / max(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


class _MemoryBudget:
    """A semaphore counted in bytes: decodes wait until what they will hold fits beside the
    others'; one larger than the whole budget waits until it is alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = 0

    @contextmanager
    def hold(self, nbytes: int, limit: int) -> Iterator[None]:
        want = max(0, min(nbytes, limit))
        with self._cond:
            self._cond.wait_for(lambda: self._held + want <= limit)
            self._held += want
        try:
            yield
        finally:
            with self._cond:
                self._held -= want
                self._cond.notify_all()

    @property
    def held(self) -> int:
        return self._held


decode_budget = _MemoryBudget()


def _native_bytes(img: Image.Image) -> int:
    """What the decoded image and one working copy of it take (Pillow keeps 1, 2 or 4 bytes a
    pixel; a palette image becomes RGB)."""
    per_pixel = {"1": 1, "L": 1, "P": 5, "I;16": 2, "I;16B": 2, "I;16L": 2}.get(img.mode, 4)
    return 2 * per_pixel * img.size[0] * img.size[1]


def _decode_raster(data: bytes, fmt: ImageFormat, max_side: int | None) -> DecodedImage:
    settings = get_settings()
    try:
        with Image.open(io.BytesIO(data)) as img:
            source = img.size
            check_pixel_budget(*source, settings)  # the header only: nothing decoded yet
            target = fit_within(source, max_side)
            if fmt == "jpeg" and target != source:
                # libjpeg's DCT scaling: decoded at 1/2, 1/4 or 1/8 size, never below target.
                img.draft(img.mode, target)
            with decode_budget.hold(_native_bytes(img), settings.decode_memory_bytes):
                img.load()
                mode = img.mode
                pixels = _to_unit(img, target)
    # Pillow reports a broken chunk as SyntaxError and some malformed headers as struct or
    # index errors: all of them mean "not a decodable image", never a server error.
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError,
            struct.error, Image.DecompressionBombError) as exc:
        raise InputError(f"The {fmt.upper()} file could not be decoded: {exc}.",
                         code=errors.UNDECODABLE) from exc
    return DecodedImage(pixels=np.ascontiguousarray(pixels), format=fmt, meta={"mode": mode},
                        source_size=source)


def _to_unit(img: Image.Image, target: tuple[int, int]) -> np.ndarray:
    """A loaded image -> float32 [0, 1] pixels of size `target`, shrunk before any conversion
    to float (a full-size float copy of a large image is what must never exist)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = shrink_array(np.asarray(img), target)
        peak = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return arr.astype(np.float32, copy=False) / np.float32(peak)
    if mode == "1":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGB" if _palette_is_colour(img) else "L")
    img = _shrink(img, target)
    if img.mode in ("L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return pixels[..., 0] if _is_gray_rgb(pixels) else pixels


def _shrink(img: Image.Image, target: tuple[int, int]) -> Image.Image:
    if img.size == target:
        return img
    # reducing_gap: an integer box reduction first (output-sized memory), then Lanczos.
    return img.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)


def shrink_array(arr: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """An HxW or HxWxC array of any dtype -> float32 of size `target` (width, height), by block
    means a strip of rows at a time, then a bilinear step to the exact size: the full-size
    float array never exists. Unchanged (not copied) when it already has that size."""
    h, w = arr.shape[:2]
    tw, th = target
    if (w, h) == (tw, th):
        return arr
    f = max(1, min(h // th, w // tw))
    bh, bw = (h // f) * f, (w // f) * f
    rest = arr.shape[2:]
    out = np.empty((bh // f, bw // f, *rest), np.float32)
    rows = max(1, (1 << 20) // max(1, bw * f))  # output rows per strip: ~1 M source values
    for r in range(0, bh // f, rows):
        strip = np.asarray(arr[r * f:min(bh, (r + rows) * f), :bw], dtype=np.float32)
        out[r:r + rows] = strip.reshape(-1, f, bw // f, f, *rest).mean(axis=(1, 3))
    if out.shape[:2] == (th, tw):
        return out
    planes = [out] if out.ndim == 2 else [out[..., c] for c in range(out.shape[2])]
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(p), "F")
                          .resize((tw, th), Image.Resampling.BILINEAR)) for p in planes]
    return resized[0] if out.ndim == 2 else np.stack(resized, axis=-1)


def _palette_is_colour(img: Image.Image) -> bool:
    """From the palette's entries (a few hundred bytes), not from a full-size RGB copy; a
    colour palette whose used entries are grey is caught by the RGB path's grey test."""
    palette = img.getpalette("RGB") or []
    entries = np.asarray(palette, dtype=np.int16).reshape(-1, 3)
    return bool(entries.size) and not _is_gray_rgb(entries)


def _is_gray_rgb(rgb: np.ndarray) -> bool:
    """True when the three channels are (nearly) equal: a grayscale scan saved as RGB."""
    spread = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])
    tol = 3.0 / 255.0 if rgb.dtype.kind == "f" else 3
    return bool(np.mean(spread > tol) < 0.01)


def to_png_bytes(pixels: np.ndarray, max_side: int | None = None) -> bytes:
    """Decoded pixels (float32 [0, 1], HxW or HxWx3) as an 8-bit PNG a browser can show.

    Pixels only: Pillow writes no text chunks unless asked, so nothing from the source file's
    metadata can travel with it. With `max_side`, shrunk (aspect kept) to fit that square.
    The worker's stored previews and the PDF report both encode through here, so a report
    drawn from either shows the same 8-bit pixels."""
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected HxW or HxWx3 pixels, got shape {pixels.shape}")
    eight_bit = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    picture = Image.fromarray(eight_bit)  # uint8 HxW is "L", HxWx3 is "RGB"
    if max_side is not None:
        picture.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def check_dimensions(img: DecodedImage | CheckedImage, settings: Settings | None = None) -> None:
    """Refuse images too small to read, too large to process, or absurdly elongated."""
    settings = settings or get_settings()
    width, height = img.source_width, img.source_height  # as stored, before any shrinking
    short, long_ = sorted((height, width))
    if short < settings.min_image_side:
        raise InputError(
            f"The image is {width}x{height} pixels; each side must be at least "
            f"{settings.min_image_side}.", code=errors.IMAGE_TOO_SMALL)
    if long_ > settings.max_image_side:
        raise InputError(
            f"The image is {width}x{height} pixels; no side may exceed {settings.max_image_side}.",
            code=errors.IMAGE_TOO_LARGE)
    if long_ / short > settings.max_aspect_ratio:
        raise InputError(
            f"The image is {width}x{height} pixels, an aspect ratio above "
            f"{settings.max_aspect_ratio:g}:1; MRI slices are close to square.",
            code=errors.BAD_ASPECT_RATIO)


# The API only judges an upload (it decodes, and its dimensions); the worker decodes it again
# for the model. JPEG and DICOM are decoded this small (a JPEG at 1/8 scale: libjpeg still
# reads every coefficient, so a truncated or corrupt stream is still refused); a PNG is not
# decoded at all, but checked as a stream (`check_png`).
CHECK_SIDE = 256


@dataclass(frozen=True)
class CheckedImage:
    """What the API learned judging an upload: its format and its size as stored."""

    format: ImageFormat
    source_size: tuple[int, int]

    @property
    def source_width(self) -> int:
        return self.source_size[0]

    @property
    def source_height(self) -> int:
        return self.source_size[1]


def decode_and_check(data: bytes, *, frame: int | None = None,
                     settings: Settings | None = None) -> CheckedImage:
    """Everything the API checks before it accepts an upload (size is checked while
    streaming), in memory bounded by the check itself, not by the image's pixel count."""
    settings = settings or get_settings()
    if len(data) > settings.max_upload_bytes:
        raise InputError(
            f"The file is {len(data)} bytes; the limit is {settings.max_upload_bytes}.",
            code=errors.FILE_TOO_LARGE, http_status=413)
    if sniff_format(data) == "png":
        checked = CheckedImage("png", check_png(data, settings))
    else:
        img = decode_image(data, frame=frame, max_side=CHECK_SIDE)
        checked = CheckedImage(img.format, (img.source_width, img.source_height))
    check_dimensions(checked, settings)
    return checked


# Bits per pixel of each PNG colour type at each allowed bit depth (PNG spec, table 11.1).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Adam7: (first row, first column, row step, column step) of each pass.
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
          (1, 0, 2, 1))


def check_png(data: bytes, settings: Settings | None = None) -> tuple[int, int]:
    """Judge a PNG without decoding its pixels; returns (width, height) or InputError.

    Chunks walked with their CRCs, a valid IHDR checked against the pixel budget, PLTE where
    the colour type needs one, and the IDAT stream inflated a megabyte at a time (counted,
    then dropped) to exactly the size the header implies, every row starting with a known
    filter type. Memory stays about a megabyte whatever the image's size: an 8192x8192 RGBA
    PNG costs the API no 256 MB buffer. The worker decodes it (Pillow) later."""
    settings = settings or get_settings()

    def bad(why: str) -> InputError:
        return InputError(f"The PNG file could not be decoded: {why}.", code=errors.UNDECODABLE)

    pos, header, palette, idat_seen = 8, None, False, False
    inflater = zlib.decompressobj()
    rows = _RowCheck()
    while True:
        if pos + 12 > len(data):
            raise bad("truncated (no IEND chunk)")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body_end = data[pos + 4:pos + 8], pos + 8 + length
        if length > 0x7FFFFFFF or body_end + 4 > len(data):
            raise bad(f"chunk {kind!r} runs past the end of the file")
        (crc,) = struct.unpack(">I", data[body_end:body_end + 4])
        if zlib.crc32(data[pos + 4:body_end]) != crc:
            raise bad(f"chunk {kind!r} fails its CRC")
        body = memoryview(data)[pos + 8:body_end]
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise bad("the first chunk is not a valid IHDR")
            header = struct.unpack(">IIBBBBB", body)
            width, height, depth, colour, compression, filtering, interlace = header
            if (colour not in _PNG_DEPTHS or depth not in _PNG_DEPTHS[colour] or compression
                    or filtering or interlace > 1 or not width or not height):
                raise bad("its header names an impossible format")
            check_pixel_budget(width, height, settings)  # before a byte of pixel data is read
            rows = _RowCheck(width, height, _PNG_CHANNELS[colour] * depth, bool(interlace))
        elif kind == b"PLTE":
            palette = True
        elif kind == b"IDAT":
            if colour == 3 and not palette:
                raise bad("a palette image without its palette")
            idat_seen = True
            try:
                while body:
                    rows.feed(inflater.decompress(body, 1 << 20))
                    body = inflater.unconsumed_tail
            except zlib.error as exc:
                raise bad(f"its image data is corrupt ({exc})") from exc
        elif kind == b"IEND":
            break
        pos = body_end + 4
    if not idat_seen:
        raise bad("no image data")
    try:
        rows.feed(inflater.flush())
    except zlib.error as exc:
        raise bad(f"its image data is corrupt ({exc})") from exc
    rows.finish(bad)
    return width, height


class _RowCheck:
    """Counts the inflated bytes of a PNG against its header and checks each row's filter
    byte (0-4), a chunk at a time, keeping nothing."""

    def __init__(self, width: int = 0, height: int = 0, bits: int = 0,
                 interlaced: bool = False) -> None:
        # Each pass of Adam7 (or the one image): (rows, bytes a row including its filter byte).
        passes = [(0, 0, 1, 1)] if not interlaced else list(_ADAM7)
        self._rows: list[tuple[int, int]] = []
        for r0, c0, dr, dc in passes:
            n_rows = (height - r0 + dr - 1) // dr if height > r0 else 0
            n_cols = (width - c0 + dc - 1) // dc if width > c0 else 0
            if n_rows and n_cols:
                self._rows.append((n_rows, 1 + (n_cols * bits + 7) // 8))
        self.expected = sum(n * stride for n, stride in self._rows)
        self.seen = 0
        self.bad_filter = False

    def _filter_offsets(self, start: int, stop: int) -> np.ndarray:
        """Offsets in [start, stop) of the stream where a row's filter byte sits."""
        out, base = [], 0
        for n, stride in self._rows:
            end = base + n * stride
            lo, hi = max(start, base), min(stop, end)
            if lo < hi:
                first = base + -(-(lo - base) // stride) * stride
                out.append(np.arange(first, hi, stride))
            base = end
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        start, self.seen = self.seen, self.seen + len(chunk)
        if start >= self.expected:
            return  # too much data: reported by `finish`
        offsets = self._filter_offsets(start, min(self.seen, self.expected)) - start
        if offsets.size and int(np.frombuffer(chunk, np.uint8)[offsets].max()) > 4:
            self.bad_filter = True

    def finish(self, bad: Any) -> None:
        if self.seen != self.expected:
            raise bad(f"its image data has {self.seen} bytes where its header implies "
                      f"{self.expected} (truncated or padded)")
        if self.bad_filter:
            raise bad("a row has an unknown filter type")


# --- metadata: originals are stored without it ----------------------------------------------

# PNG chunks kept: the critical ones and the ancillary ones that say how to show the pixels.
# Everything else goes: tEXt/zTXt/iTXt (PatientName, Comment...), eXIf (GPS, camera, dates),
# iCCP (a profile named and described in text), tIME, and private chunks of any name.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT",
             b"bKGD", b"pHYs"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG segments dropped: APP1 (EXIF, XMP), APP12 (picture info), APP13 (Photoshop/IPTC), COM.
_JPEG_DROP = {0xE1, 0xEC, 0xED, 0xFE}


def strip_metadata(data: bytes) -> bytes:
    """PNG and JPEG bytes without their metadata, pixels untouched; anything else as it is.

    PNG: only the chunks that carry or show pixels are kept (`_PNG_KEEP`), byte for byte.
    JPEG: APP1/APP12/APP13/COM segments are cut out at the byte level (no re-encoding), and
    whatever follows the end-of-image marker goes too. Bytes that cannot be walked are kept
    as they are: a PNG is then re-saved losslessly by Pillow (pixels only); a JPEG keeps what
    its walk did not reach."""
    fmt = sniff_format(data)
    if fmt == "png":
        return _strip_png(data)
    if fmt == "jpeg":
        return _strip_jpeg(data)
    return data


def _strip_png(data: bytes) -> bytes:
    kept = [_PNG_SIGNATURE]
    pos, dropped = len(_PNG_SIGNATURE), False
    try:
        while pos < len(data):
            (length,) = struct.unpack(">I", data[pos:pos + 4])
            kind = data[pos + 4:pos + 8]
            end = pos + 12 + length
            if len(kind) < 4 or end > len(data):
                raise ValueError("truncated chunk")
            if kind in _PNG_KEEP:
                kept.append(data[pos:end])
            else:
                dropped = True
            pos = end
            if kind == b"IEND":
                dropped = dropped or pos < len(data)
                break
        else:
            raise ValueError("no IEND")
    except (struct.error, ValueError):
        return _resave_png(data)
    return b"".join(kept) if dropped else data


def _resave_png(data: bytes) -> bytes:
    """Pixels (and palette, transparency) only, through Pillow: lossless for PNG."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        buf = io.BytesIO()
        params: dict[str, Any] = {}
        if "transparency" in img.info:
            params["transparency"] = img.info["transparency"]
        img.save(buf, format="PNG", **params)
    return buf.getvalue()


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each piece of the file, entropy-coded data included (marker
    0: the scan data after an SOS header), up to EOI; ValueError if malformed."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("no SOI")
    found = [(0xD8, 0, 2)]
    pos, size = 2, len(data)
    while pos < size:
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at {pos}")
        start = pos
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            raise ValueError("truncated marker")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            found.append((marker, start, pos))
            return found
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            found.append((marker, start, pos))
            continue
        if pos + 2 > size:
            raise ValueError("truncated segment length")
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        end = pos + length
        if length < 2 or end > size:
            raise ValueError("truncated segment")
        found.append((marker, start, end))
        pos = end
        if marker == 0xDA:  # SOS: entropy-coded data up to the next real marker
            scan = pos
            while pos < size - 1 and not (data[pos] == 0xFF and data[pos + 1] not in (
                    0x00, *range(0xD0, 0xD8))):
                pos += 1
            if pos >= size - 1:
                raise ValueError("scan data runs to the end")
            found.append((0, scan, pos))
    raise ValueError("no EOI")


def _strip_jpeg(data: bytes) -> bytes:
    kept: list[bytes] = []
    try:
        for marker, start, end in _jpeg_segments(data):
            if marker not in _JPEG_DROP:
                kept.append(data[start:end])
    except ValueError:
        return _strip_jpeg_header(data)
    stripped = b"".join(kept)
    return stripped if len(stripped) != len(data) else data


def _strip_jpeg_header(data: bytes) -> bytes:
    """The fallback for a JPEG whose scans cannot be walked: drop metadata segments before
    the first scan, keep the rest as it is."""
    kept: list[bytes] = [data[:2]]
    pos = 2
    try:
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            marker = data[pos + 1]
            if marker in (0xDA, 0xD9):
                break
            (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
            end = pos + 2 + length
            if length < 2 or end > len(data):
                return data
            if marker not in _JPEG_DROP:
                kept.append(data[pos:end])
            pos = end
    except struct.error:
        return data
    return b"".join(kept) + data[pos:]
