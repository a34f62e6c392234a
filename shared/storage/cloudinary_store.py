"""Cloudinary through its SDK: `authenticated` assets, reached only through signed links.

Originals go to `neuroscan/uploads`, heatmaps and overlays to `neuroscan/results`. The
public_id is deterministic (the scan id plus a suffix) and uploads use `overwrite=True`, so a
retried task replaces its asset instead of making a second one.

Links are `private_download_url`s: the SDK signs (SHA-1 with the API secret) the public_id,
format, type and an `expires_at` time, entirely offline; the service checks the signature and
the expiry on every request. The alternatives do not fit: a signed delivery URL (`sign_url`)
never expires, and token-based `auth_token` needs a separately provisioned key.
"""

from __future__ import annotations

import io
import time
from typing import Any

import cloudinary.exceptions
import cloudinary.uploader
import cloudinary.utils
import httpx

from shared.storage.base import Folder, StorageError, check_name, split_ref

ROOT_FOLDER = "neuroscan"
DELIVERY_TYPE = "authenticated"
_FETCH_TTL_S = 300


class CloudinaryStorage:
    backend = "cloudinary"

    def __init__(self, credentials: dict[str, str], *, upload_prefix: str | None = None,
                 timeout_s: float = 60.0):
        # Passed per call instead of cloudinary.config(): no process-wide state to race on.
        self._options: dict[str, Any] = {
            "cloud_name": credentials["cloud_name"],
            "api_key": credentials["api_key"],
            "api_secret": credentials["api_secret"],
        }
        if upload_prefix:
            self._options["upload_prefix"] = upload_prefix.rstrip("/")
        self._timeout = timeout_s

    def put(self, folder: Folder, name: str, data: bytes, content_type: str) -> str:
        check_name(folder, name)
        stem, _, ext = name.rpartition(".")
        public_id = f"{ROOT_FOLDER}/{folder}/{stem or name}"
        try:
            result = cloudinary.uploader.upload(
                io.BytesIO(data), public_id=public_id, type=DELIVERY_TYPE, overwrite=True,
                invalidate=True, resource_type="image", asset_folder=f"{ROOT_FOLDER}/{folder}",
                filename=name, timeout=self._timeout, **self._options)
        except (cloudinary.exceptions.Error, OSError) as exc:
            raise StorageError(f"Cloudinary upload of {public_id} failed: {exc}") from exc
        fmt = result.get("format") or ext
        return f"{self.backend}:{result.get('public_id', public_id)}.{fmt}"

    def delete(self, folder: Folder, name: str) -> None:
        check_name(folder, name)
        stem = name.rpartition(".")[0] or name
        public_id = f"{ROOT_FOLDER}/{folder}/{stem}"
        try:
            # invalidate: CDN copies go too, so a link handed out earlier stops working.
            result = cloudinary.uploader.destroy(
                public_id, type=DELIVERY_TYPE, resource_type="image", invalidate=True,
                timeout=self._timeout, **self._options)
        except (cloudinary.exceptions.Error, OSError) as exc:
            raise StorageError(f"Cloudinary delete of {public_id} failed: {exc}") from exc
        if result.get("result") not in ("ok", "not found"):
            raise StorageError(f"Cloudinary delete of {public_id} failed: {result}")

    def url(self, ref: str, ttl_s: int, *, tenant_id: str = "", key_id: str = "") -> str:
        # Cloudinary signs the asset and expiry only: its links cannot name a tenant (each
        # still names one scan's asset, handed out only to that scan's tenant).
        del tenant_id, key_id
        public_id, fmt = self._parse(ref)
        return cloudinary.utils.private_download_url(
            public_id, fmt, type=DELIVERY_TYPE, expires_at=int(time.time()) + int(ttl_s),
            **self._options)

    def get(self, ref: str) -> bytes:
        try:
            response = httpx.get(self.url(ref, _FETCH_TTL_S), timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise StorageError(f"Cloudinary download of {ref} failed: {exc}") from exc
        if response.status_code != 200:
            raise StorageError(f"Cloudinary download of {ref} failed: HTTP {response.status_code}")
        return response.content

    def _parse(self, ref: str) -> tuple[str, str]:
        public_id, dot, fmt = split_ref(ref, self.backend).rpartition(".")
        if not dot:
            raise ValueError(f"Cloudinary ref without a format: {ref!r}")
        return public_id, fmt
