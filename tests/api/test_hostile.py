"""Hostile input at the API: every bad file is a clear 4xx, alone; nothing is a 5xx.

The API runs in this process on a real SQLite database and broker file (no worker: what is
judged here is judged at the door). Each bad file is sent alone to `POST /v1/scans` and all of
them together, with one good slice, in one batch: the batch is accepted, the good slice with
it, and every bad file is reported by name. Then the requests themselves: no key with a large
body (refused before one byte is read), chunked bodies over the cap, thousands of tiny parts,
huge and non-ASCII headers and signatures.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.db.migrate import upgrade_to_head
from shared.db.session import sync_session
from shared.db.tenants import issue_key
from tests.support.dicomkit import mr_dataset, to_bytes
from tests.support.images import brain_jpeg, brain_png, encode
from tests.support.inprocess import settings_env

ARCHIVE_CAP = 4 << 20  # MAX_ARCHIVE_BYTES here, so a zip bomb is cheap to build


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A grey PNG of zeros: a few hundred KB on the wire, width*height bytes once decoded.
    With `rows`, only that many rows of data follow (a header that lies)."""
    comp = zlib.compressobj(9)
    line = b"\0" * (width + 1)
    idat = b"".join(comp.compress(line) for _ in range(height if rows is None else rows))
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 header is rewritten to claim width x height."""
    data = bytearray(brain_jpeg(1, size=64))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def zipped(*entries: tuple[str | zipfile.ZipInfo, bytes], method: int = zipfile.ZIP_DEFLATED
           ) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def zip_with_corrupt_member() -> bytes:
    """Two members; the first one's deflate stream is garbled (zlib.error when read)."""
    data = bytearray(zipped(("bad.png", brain_png(2)), ("good.png", brain_png(3))))
    start = 30 + len("bad.png") + 10
    data[start:start + 64] = bytes(range(64))
    return bytes(data)


def _pil(mode: str, fmt: str, size: int = 128, **kw: object) -> bytes:
    img = Image.fromarray((np.indices((size, size)).sum(0) % 256).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def animated(fmt: str) -> bytes:
    frames = [Image.fromarray(np.full((96, 96), v, np.uint8)) for v in (10, 200, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def dicom_bytes(**changes: object) -> bytes:
    ds = mr_dataset()
    for name, value in changes.items():
        setattr(ds, name, value)
    return to_bytes(ds)


def dicom_raw(keyword: str, vr: str, value: bytes) -> bytes:
    """An MR slice with one attribute's bytes written as they are (values pydicom itself
    would refuse to encode: a malformed header from some other writer)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = mr_dataset()
    tag = Tag(tag_for_keyword(keyword))
    value += b" " * (len(value) % 2)
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return to_bytes(ds)


def deflated_dicom_bomb(inflated: int = 300 << 20) -> bytes:
    """A Deflated Explicit VR file whose dataset inflates to `inflated` bytes of zeros (over
    8x MAX_UPLOAD_BYTES), a few hundred KB on the wire; built a megabyte at a time."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = mr_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(ds)
    start = 144 + int.from_bytes(data[140:144], "little")  # after the file meta group
    comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [comp.compress(struct.pack("<HH", 0x0009, 0x1010) + b"OB\0\0"
                          + struct.pack("<I", inflated))]
    zeros = b"\0" * (1 << 20)
    body += [comp.compress(zeros) for _ in range(inflated >> 20)]
    return data[:start] + b"".join(body) + comp.flush()


def _symlink_zip() -> bytes:
    info = zipfile.ZipInfo("link.png")
    info.external_attr = (0o120777) << 16
    return zipped((info, b"/etc/passwd"))


def _encrypted_flag_zip() -> bytes:
    data = bytearray(zipped(("a.png", brain_png(4))))
    data[6] |= 0x1  # local header: "encrypted"
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 8] |= 0x1  # central directory too
    return bytes(data)


GOOD = brain_png(5)

# Files that must be refused (4xx), name -> bytes.
REFUSED: dict[str, bytes] = {
    "empty.png": b"",
    "truncated.png": GOOD[:300],
    "truncated.jpg": brain_jpeg(2)[:500],
    "png-magic-only.png": b"\x89PNG\r\n\x1a\n",
    "jpeg-magic-only.jpg": b"\xff\xd8\xff",
    "text.png": b"just some text, not an image\n" * 10,
    "page.jpg": b"<!doctype html><html><body><script>alert(1)</script></body></html>",
    "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "doc.pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
    "still.gif": _pil("L", "GIF"),
    "moving.gif": animated("GIF"),
    "bitmap.bmp": _pil("L", "BMP"),
    "scan.tiff": _pil("L", "TIFF"),
    "photo.webp": _pil("RGB", "WEBP"),
    "exe.dcm": b"MZ" + b"\0" * 200,
    "bad-crc.png": GOOD[:33] + b"\0\0\0\0" + GOOD[37:],
    "bomb-11000.png": png_bomb(11000, 11000),
    "bomb-9000-wide.png": png_bomb(9000, 9000, rows=64),
    "jpeg-claims-65000.jpg": jpeg_with_size(65000, 65000),
    "jpeg-claims-0x0.jpg": jpeg_with_size(0, 0),
    "tiny.png": encode(np.full((8, 8), 100, np.uint8)),
    "sliver.png": encode(np.full((64, 2000), 100, np.uint8)),
    "no-idat.png": GOOD[:33] + b"\0\0\0\0IEND\xaeB`\x82",
    "dicom-garbage.dcm": b"\0" * 128 + b"DICM" + b"\xff" * 400,
    "dicom-truncated.dcm": dicom_bytes()[:700],
    "dicom-absurd-size.dcm": dicom_bytes(Rows=65535, Columns=65535),
    "dicom-ct.dcm": dicom_bytes(Modality="CT"),
    "zip-empty.zip": zipped(("folder/", b"")),
    "zip-truncated.zip": zipped(("a.png", GOOD))[:200],
    "zip-traversal.zip": zipped(("../../etc/evil.png", GOOD)),
    "zip-absolute.zip": zipped(("/etc/evil.png", GOOD)),
    "zip-symlink.zip": _symlink_zip(),
    "zip-encrypted.zip": _encrypted_flag_zip(),
    "zip-bomb.zip": zipped(("zeros.png", b"\0" * (ARCHIVE_CAP * 2))),
    "zip-only-junk.zip": zipped(("notes.txt", b"hello"), ("page.html", b"<html/>")),
    "zip-nested.zip": zipped(("inner.zip", zipped(("a.png", GOOD)))),
    "png-then-nothing.png": GOOD[:8] + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 256, 256, 8,
                                                                       0, 0, 0, 0)),
    "bad-bit-depth.png": GOOD[:8] + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 256, 256, 7, 0,
                                                                    0, 0, 0)) + GOOD[33:],
    # Malformed DICOM values and absurd dimensions, judged from the header before pixel_array.
    "dicom-frames-not-a-number.dcm": dicom_raw("NumberOfFrames", "IS", b"abc"),
    "dicom-frames-negative.dcm": dicom_raw("NumberOfFrames", "IS", b"-5"),
    "dicom-frames-absurd.dcm": dicom_raw("NumberOfFrames", "IS", b"99999999"),
    "dicom-frames-not-present.dcm": dicom_raw("NumberOfFrames", "IS", b"400"),
    "dicom-rows-zero.dcm": dicom_raw("Rows", "US", b"\0\0"),
    "dicom-rows-two-values.dcm": dicom_raw("Rows", "US", b"\x01\0\x02\0"),
    "dicom-bits-13.dcm": dicom_raw("BitsAllocated", "US", b"\x0d\0"),
    "dicom-samples-7.dcm": dicom_raw("SamplesPerPixel", "US", b"\x07\0"),
    "dicom-photometric-nonsense.dcm": dicom_raw("PhotometricInterpretation", "CS", b"RAINBOW"),
    "dicom-modality-binary.dcm": dicom_raw("Modality", "CS", b"\xff\xfe"),
    "dicom-deflate-bomb.dcm": deflated_dicom_bomb(),
    "dicom-over-pixel-budget.dcm": dicom_bytes(Rows=8192, Columns=8192),
    # A ZIP inside a ZIP inside a ZIP, and one whose only member has a control-character name.
    "zip-nested-deep.zip": zipped(("a.zip", zipped(("b.zip", zipped(("c.png", GOOD)))))),
    "zip-control-name.zip": zipped(("evil\r\n\x1b[31m.png", b"not an image")),
}

# Odd but legitimate, or up to the worker's input gate: any 2xx/4xx, never a 5xx.
EITHER: dict[str, bytes] = {
    "cmyk.jpg": _pil("CMYK", "JPEG"),
    "sixteen-bit.png": encode((np.indices((128, 128)).sum(0) * 200).astype(np.uint16)),
    "animated.png": animated("PNG"),
    "rgb-grey.png": _pil("RGB", "PNG"),
    "one-bit.png": _pil("1", "PNG"),
    "palette.png": _pil("P", "PNG"),
    "grey-alpha.png": _pil("LA", "PNG"),
    "polyglot-png-zip.png": GOOD + zipped(("x.txt", b"hi")),
    "huge-text-chunk.png": GOOD[:33] + _png_chunk(b"tEXt", b"Comment\0" + b"x" * (2 << 20))
    + GOOD[33:],
    "zip-corrupt-member.zip": zip_with_corrupt_member(),
    "\u00e9t\u00e9 \u2603.png": GOOD,
    "../../etc/passwd\x00.png": GOOD,
    "ctl\r\nX-Injected: 1.png": GOOD,
    "x" * 900 + ".png": GOOD,
    # IHDR says 6000x6000 (under the budget), 10 rows follow, no IEND: up to the decoder.
    "lying-header-6000.png": png_bomb(6000, 6000, rows=10)[:-12],
    # Unreadable window and rescale values are ignored, as a viewer would.
    "dicom-window-not-a-number.dcm": dicom_raw("WindowCenter", "DS", b"abc"),
    "dicom-slope-infinite.dcm": dicom_raw("RescaleSlope", "DS", b"inf"),
    "rgba.png": _pil("RGBA", "PNG"),
    "progressive.jpg": _pil("L", "JPEG", progressive=True),
    "cmyk-adobe.jpg": _pil("CMYK", "JPEG", quality=50),
}


def _configure(root: Path) -> dict[str, str]:
    return {"database_url": f"sqlite+aiosqlite:///{root / 'db.sqlite'}",
            "broker_url": f"sqla+sqlite:///{root / 'broker.db'}",
            "media_dir": str(root / "media"), "secret_key": "hostile-test",
            "max_archive_bytes": str(ARCHIVE_CAP), "max_request_bytes": str(64 << 20)}


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("hostile")
    with settings_env(**_configure(root)):
        upgrade_to_head()
        with sync_session() as session:
            key = issue_key(session, "hostile").key
        yield key


@pytest.fixture()
async def client(key: str) -> AsyncIterator[httpx.AsyncClient]:
    from api.main import create_app

    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


def test_the_suite_has_forty_distinct_bad_files() -> None:
    assert len(REFUSED) + len(EITHER) >= 40
    assert len(set(REFUSED.values())) == len(REFUSED)


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_each_bad_file_alone_is_a_clear_4xx(client: httpx.AsyncClient, name: str) -> None:
    field = "files" if name.endswith(".zip") else "file"
    path = "/v1/batches" if field == "files" else "/v1/scans"
    r = await client.post(path, files={field: (name, REFUSED[name], "application/octet-stream")})
    assert 400 <= r.status_code < 500 and r.status_code != 401, (name, r.status_code, r.text)
    assert r.json()["error"]["code"] not in ("internal_error", "http_error"), r.text


@pytest.mark.parametrize("name", sorted(EITHER))
async def test_odd_files_are_never_a_server_error(client: httpx.AsyncClient, name: str) -> None:
    field = "files" if name.endswith(".zip") else "file"
    path = "/v1/batches" if field == "files" else "/v1/scans"
    r = await client.post(path, files={field: (name, EITHER[name], "application/octet-stream")})
    assert r.status_code in (202, 400, 413, 415, 422), (name, r.status_code, r.text)


async def test_one_batch_of_every_bad_file_keeps_the_good_ones(client: httpx.AsyncClient
                                                                ) -> None:
    files = [("files", ("good.png", GOOD, "image/png"))]
    files += [("files", (n, d, "application/octet-stream")) for n, d in REFUSED.items()]
    files += [("files", (n, d, "application/octet-stream")) for n, d in EITHER.items()]
    r = await client.post("/v1/batches", files=files)
    assert r.status_code == 202, r.text
    body = r.json()
    rejected = {x["filename"] for x in body["rejected"]}
    assert "good.png" not in rejected
    # Every refused file is named (ZIP members by their own name where they were read).
    for name in REFUSED:
        if not name.endswith(".zip"):
            assert name in rejected, name
    assert "bad.png" in rejected  # the corrupt member of zip-corrupt-member.zip, alone...
    assert len(body["scan_ids"]) >= 2  # ...while good.png and its archive-mate are accepted
    assert all(x["error"]["code"] != "internal_error" for x in body["rejected"])


async def test_non_ascii_and_absurd_media_signatures_are_4xx(client: httpx.AsyncClient) -> None:
    for sig in ("%C3%A9", "%00", "%FF%FE", "a" * 10000, ""):
        r = await client.get(f"/media/results/x.png?expires=99999999999&sig={sig}",
                             headers={"Authorization": ""})
        assert 400 <= r.status_code < 500, (sig, r.status_code)
    r = await client.get("/media/results/x.png?expires=notanumber&sig=abc")
    assert r.status_code == 422


async def test_huge_and_non_ascii_headers_are_4xx(client: httpx.AsyncClient) -> None:
    cases = [{"Authorization": "Bearer " + "x" * 60000}, {"Authorization": "Bearer nsk_\u00e9"},
             {"Authorization": "Bearer"}, {"Authorization": "Bearer  "},
             {"Last-Event-ID": "\u00e9" * 100}, {"Content-Length": "not-a-number"}]
    for headers in cases:
        encoded = {k: v.encode("utf-8") for k, v in headers.items()}
        r = await client.get("/v1/me", headers=encoded)
        assert 400 <= r.status_code < 500 or r.status_code == 200, (headers, r.status_code)


async def test_thousands_of_tiny_parts_are_refused(client: httpx.AsyncClient) -> None:
    files = [("files", (f"{i}.png", b"x", "image/png")) for i in range(2000)]
    r = await client.post("/v1/batches", files=files)
    assert 400 <= r.status_code < 500, r.status_code


async def _asgi(path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
                ) -> tuple[int, int]:
    """Call the app directly; returns (status, how many body chunks it read)."""
    from api.main import create_app

    app = create_app()
    read = 0
    queue = list(chunks)

    async def receive() -> dict[str, object]:
        nonlocal read
        read += 1
        body = queue.pop(0) if queue else b""
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    status = 0

    async def send(message: dict[str, object]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])  # type: ignore[arg-type]

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers, "http_version": "1.1",
             "scheme": "http", "server": ("t", 80), "client": ("127.0.0.1", 1), "root_path": ""}
    await app(scope, receive, send)  # type: ignore[arg-type]
    return status, read


async def test_no_key_is_refused_before_the_body_is_read(key: str) -> None:
    ctype = (b"content-type", b"multipart/form-data; boundary=x")
    big = [(b"content-length", str(1 << 30).encode()), ctype]
    assert await _asgi("/v1/scans", big, [b"x" * 1024] * 4) == (401, 0)
    bad = [(b"authorization", b"Bearer nsk_wrong"), ctype]
    assert await _asgi("/v1/batches", bad, [b"x" * 1024] * 4) == (401, 0)


async def test_bodies_over_the_cap_are_refused_declared_or_chunked(key: str) -> None:
    auth = (b"authorization", f"Bearer {key}".encode())
    ctype = (b"content-type", b"multipart/form-data; boundary=x")
    declared = [auth, ctype, (b"content-length", str(1 << 30).encode())]
    assert await _asgi("/v1/scans", declared, [b"x"]) == (413, 0)
    # Chunked (no length): cut off as soon as the count passes the cap, not read to the end.
    head = (b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    status, read = await _asgi("/v1/batches", [auth, ctype], [head] + [b"y" * (1 << 20)] * 200)
    assert status == 413 and read < 80, (status, read)


def test_a_real_api_process_stays_small_through_the_whole_suite() -> None:
    """bench/hostile_rss.py's run, on a real `neuroscan api` process (its own interpreter,
    loopback HTTP): no 5xx and every refusal as above, and its RSS stays bounded. The goal
    is 200 MiB (bench/results/hostile_rss.json); the bound here is generous, for noisy
    shared machines and allocator differences."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "hostile_rss.py"
    spec = importlib.util.spec_from_file_location("hostile_rss", path)
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    result = bench.run()
    assert result["server_errors"] == 0 and result["findings"] == [], result
    assert result["peak_mib"] < 300, result
