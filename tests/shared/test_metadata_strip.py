"""Originals are stored without metadata (EXIF GPS, text chunks, XMP, comments), pixels
untouched: `shared.imaging.strip_metadata` on real files, and an upload through the API."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest
from PIL import ExifTags, Image, PngImagePlugin

from shared.db.models import Scan, ScanUpload
from shared.db.session import sync_session
from shared.db.tenants import issue_key
from shared.imaging import strip_metadata
from tests.support.images import brain_slice
from tests.support.inprocess import asgi_client, embedded_settings

SECRETS = (b"Doe^John", b"MRN-12345", b"St Elsewhere", b"GPS", b"Exif", b"xmpmeta",
           b"PatientName")


def _exif() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "St Elsewhere scanner"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N",
                                  ExifTags.GPS.GPSLatitude: (51.0, 30.0, 12.5),
                                  ExifTags.GPS.GPSLongitudeRef: "W",
                                  ExifTags.GPS.GPSLongitude: (0.0, 7.0, 39.0)}
    return exif.tobytes()


def png_with_metadata(mode: str = "L") -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("PatientName", "Doe^John")
    info.add_itxt("Comment", "MRN-12345", lang="en")
    info.add_text("Hospital", "St Elsewhere", zip=True)
    buf = io.BytesIO()
    Image.fromarray(brain_slice(3)).convert(mode).save(buf, "PNG", pnginfo=info, exif=_exif())
    return buf.getvalue()


def jpeg_with_metadata(progressive: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(brain_slice(4)).save(
        buf, "JPEG", quality=92, exif=_exif(), comment=b"PatientName=Doe^John MRN-12345",
        xmp=b"<x:xmpmeta>Doe^John</x:xmpmeta>", progressive=progressive)
    data = buf.getvalue()
    # An APP13 (Photoshop IPTC) segment after SOI, as photo tools write it.
    payload = b"Photoshop 3.0\x00St Elsewhere"
    app13 = b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + app13 + data[2:]


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def _assert_clean(original: bytes, stripped: bytes) -> None:
    assert b"Doe^John" in original or b"PatientName" in original  # (zTXt is compressed)
    for secret in SECRETS:
        assert secret not in stripped, secret
    with Image.open(io.BytesIO(stripped)) as img:
        assert not img.getexif() and not img.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        assert not {"PatientName", "Comment", "Hospital", "exif", "xmp", "comment"} & set(img.info)
    assert np.array_equal(_pixels(original), _pixels(stripped))


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_png_loses_text_and_exif_chunks_and_keeps_its_pixels(mode: str) -> None:
    original = png_with_metadata(mode)
    with Image.open(io.BytesIO(original)) as img:  # the metadata really is there
        assert img.info["PatientName"] == "Doe^John"
        assert img.getexif().get_ifd(ExifTags.IFD.GPSInfo)[2] == (51.0, 30.0, 12.5)
    stripped = strip_metadata(original)
    _assert_clean(original, stripped)
    for chunk in (b"tEXt", b"iTXt", b"zTXt", b"eXIf"):
        assert chunk in original and chunk not in stripped
    # Nothing else changed: the kept chunks are the original's, byte for byte.
    assert len(original) - len(stripped) < 700


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_loses_app1_app13_and_comments_without_reencoding(progressive: bool) -> None:
    original = jpeg_with_metadata(progressive)
    with Image.open(io.BytesIO(original)) as img:
        assert img.getexif().get_ifd(ExifTags.IFD.GPSInfo)[1] == "N"
        assert b"Doe^John" in img.info["comment"]
    stripped = strip_metadata(original)
    _assert_clean(original, stripped)
    for marker in (b"\xff\xe1", b"\xff\xed", b"\xff\xfe"):
        assert marker not in stripped[:stripped.index(b"\xff\xda")]
    # Byte-level: every scan's entropy-coded data is carried over unchanged.
    assert original[original.index(b"\xff\xda"):].endswith(stripped[stripped.index(b"\xff\xda"):])


def test_trailing_bytes_after_the_image_go_too() -> None:
    png = png_with_metadata() + b"PK\x03\x04 St Elsewhere Doe^John"
    assert b"Doe^John" not in strip_metadata(png)
    jpeg = jpeg_with_metadata() + b"trailing Doe^John"
    stripped = strip_metadata(jpeg)
    assert stripped.endswith(b"\xff\xd9") and b"Doe^John" not in stripped


def test_clean_files_and_other_formats_come_back_unchanged() -> None:
    buf = io.BytesIO()
    Image.fromarray(brain_slice(5)).save(buf, "PNG")
    clean = buf.getvalue()
    assert strip_metadata(clean) is clean
    dicom_like = b"\x00" * 128 + b"DICM" + b"rest"
    assert strip_metadata(dicom_like) is dicom_like


# --- through the API: what is stored ----------------------------------------------------------

@pytest.fixture(scope="module")
def api_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_settings(tmp_path_factory.mktemp("strip")):
        with sync_session() as session:
            key = issue_key(session, "strip-hospital").key
        yield key


@pytest.fixture()
async def client(api_env: str) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(Authorization=f"Bearer {api_env}") as c:
        yield c


@pytest.mark.parametrize("kind", ["png", "jpeg"])
async def test_an_upload_is_stored_without_its_metadata(client: httpx.AsyncClient,
                                                        kind: str) -> None:
    original = png_with_metadata() if kind == "png" else jpeg_with_metadata()
    r = await client.post("/v1/scans", files={"file": (f"scan.{kind}", original)})
    assert r.status_code == 202, r.text
    with sync_session() as session:
        stored = bytes(session.get(ScanUpload, r.json()["id"]).data)
        scan = session.get(Scan, r.json()["id"])
        assert scan.size_bytes == len(stored) < len(original)
    _assert_clean(original, stored)
