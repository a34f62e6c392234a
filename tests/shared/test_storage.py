"""Storage backends: local disk with HMAC links, and Cloudinary through the real SDK against
the signature-checking stand-in."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from shared.settings import Settings
from shared.storage import LocalStorage, Storage, StorageError, get_storage, signing
from shared.storage.cloudinary_store import CloudinaryStorage
from tests.support.cloudinary_standin import CloudinaryStandIn, signature

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels"


@pytest.fixture()
def standin() -> CloudinaryStandIn:
    with CloudinaryStandIn() as server:
        yield server


def _cloudinary(standin: CloudinaryStandIn, secret: str | None = None) -> CloudinaryStorage:
    return CloudinaryStorage({"cloud_name": standin.cloud_name, "api_key": standin.api_key,
                              "api_secret": secret or standin.api_secret},
                             upload_prefix=standin.url)


def test_get_storage_follows_the_configuration(tmp_path: Path, standin: CloudinaryStandIn) -> None:
    local = get_storage(Settings(media_dir=tmp_path, cloudinary_url=None))
    assert isinstance(local, LocalStorage) and isinstance(local, Storage)
    cloud = get_storage(Settings(cloudinary_url=standin.cloudinary_url,
                                 cloudinary_upload_prefix=standin.url))
    assert isinstance(cloud, CloudinaryStorage) and isinstance(cloud, Storage)
    ref = cloud.put("uploads", "scan-1.png", PNG, "image/png")
    assert cloud.get(ref) == PNG


def test_local_put_get_overwrite(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, secret_key="k")
    ref = store.put("results", "s1-heatmap.png", PNG, "image/png")
    assert ref == "local:results/s1-heatmap.png" and store.get(ref) == PNG
    store.put("results", "s1-heatmap.png", PNG + b"2", "image/png")
    assert store.get(ref) == PNG + b"2"
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["s1-heatmap.png"]
    with pytest.raises(StorageError):
        store.get("local:results/missing.png")


@pytest.mark.parametrize(("folder", "name"), [
    ("uploads", "../escape.png"), ("results", "a/b.png"), ("secrets", "x.png"),
    ("uploads", ".hidden"), ("uploads", "")])
def test_unsafe_names_are_refused(tmp_path: Path, folder: str, name: str) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path, secret_key="k").put(folder, name, PNG, "image/png")  # type: ignore[arg-type]


def test_local_links_are_signed_and_expire(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, secret_key="k", public_base_url="https://scans.example.org/")
    ref = store.put("uploads", "s2.png", PNG, "image/png")
    url = store.url(ref, 120)
    parts = urlsplit(url)
    assert url.startswith("https://scans.example.org/media/uploads/s2.png?")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    expires = int(query["expires"])
    assert abs(expires - (time.time() + 120)) < 5
    assert signing.verify("uploads/s2.png", expires, query["sig"], "k") is None
    assert signing.verify("uploads/s3.png", expires, query["sig"], "k") == "invalid_signature"
    assert signing.verify("uploads/s2.png", expires, query["sig"], "other") == "invalid_signature"
    assert signing.verify("uploads/s2.png", expires, query["sig"], "k",
                          now=expires + 1) == "link_expired"


def test_cloudinary_uploads_authenticated_assets_with_deterministic_ids(
        standin: CloudinaryStandIn) -> None:
    store = _cloudinary(standin)
    original = store.put("uploads", "scan-9.jpg", b"\xff\xd8\xff" + b"jpeg", "image/jpeg")
    heatmap = store.put("results", "scan-9-heatmap.png", PNG, "image/png")
    assert original == "cloudinary:neuroscan/uploads/scan-9.jpg"
    assert heatmap == "cloudinary:neuroscan/results/scan-9-heatmap.png"
    assert set(standin.assets) == {("authenticated", "neuroscan/uploads/scan-9"),
                                   ("authenticated", "neuroscan/results/scan-9-heatmap")}
    # A retry overwrites: still one asset, now holding the new bytes.
    store.put("results", "scan-9-heatmap.png", PNG + b"v2", "image/png")
    asset = standin.assets[("authenticated", "neuroscan/results/scan-9-heatmap")]
    assert (asset.uploads, asset.data) == (2, PNG + b"v2")
    assert store.get(heatmap) == PNG + b"v2"


def test_cloudinary_links_are_signed_and_expire(standin: CloudinaryStandIn) -> None:
    store = _cloudinary(standin)
    ref = store.put("results", "scan-7-overlay.png", PNG, "image/png")
    url = store.url(ref, 60)
    assert url.startswith(f"{standin.url}/v1_1/{standin.cloud_name}/image/download?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert params["type"] == "authenticated" and "api_secret" not in params
    assert params["signature"] == signature(params, standin.api_secret)
    assert httpx.get(url).content == PNG
    tampered = url.replace("scan-7-overlay", "scan-8-overlay")
    assert httpx.get(tampered).status_code == 401
    expired = store.url(ref, -5)
    response = httpx.get(expired)
    assert response.status_code == 401 and "expired" in response.text


def test_cloudinary_refuses_a_wrong_secret_and_outages_raise(standin: CloudinaryStandIn) -> None:
    with pytest.raises(StorageError, match="Invalid Signature"):
        _cloudinary(standin, secret="wrong").put("results", "x.png", PNG, "image/png")
    assert standin.assets == {} and standin.rejected == 1
    standin.fail_uploads = 1  # one 500: tried again at once (same public_id, overwrite)
    assert _cloudinary(standin).put("results", "x.png", PNG, "image/png")
    assert standin.fail_uploads == 0 and len(standin.assets) == 1
    standin.fail_uploads = 10  # an outage: StorageError after STORAGE_MAX_ATTEMPTS tries
    with pytest.raises(StorageError, match="after 4 tries"):
        _cloudinary(standin).put("results", "y.png", PNG, "image/png")
    assert standin.fail_uploads == 6
    standin.fail_uploads = 0
    down = CloudinaryStorage({"cloud_name": "c", "api_key": "k", "api_secret": "s"},
                             upload_prefix="http://127.0.0.1:9", timeout_s=2, max_attempts=2)
    with pytest.raises(StorageError):
        down.put("results", "x.png", PNG, "image/png")
    with pytest.raises(StorageError):
        down.get("cloudinary:neuroscan/results/x.png")
