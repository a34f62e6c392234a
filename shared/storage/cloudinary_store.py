"""Cloudinary through its SDK: `authenticated` assets, reached only through signed links.

Originals go to `neuroscan/uploads`, heatmaps and overlays to `neuroscan/results`. The
public_id is deterministic (the scan id plus a suffix) and uploads use `overwrite=True`, so a
retried task replaces its asset instead of making a second one.

Links are `private_download_url`s: the SDK signs (SHA-1 with the API secret) the public_id,
format, type and an `expires_at` time, entirely offline; the service checks the signature and
the expiry on every request. The alternatives do not fit: a signed delivery URL (`sign_url`)
never expires, and token-based `auth_token` needs a separately provisioned key.

Retries: every request may take STORAGE_TIMEOUT_S; one that fails for a reason worth repeating
(no answer, a timeout, 5xx, 429) is made again, up to STORAGE_MAX_ATTEMPTS in all, 0.5, 1, 2...
s apart. Repeating is safe: an upload names its public_id and overwrites, a delete of a missing
asset is "not found", a download only reads. Refusals (400, 401, 403, 404, 409) are not retried.
What is still failing after that is a StorageError: the task retries the scan with backoff
(TASK_MAX_RETRIES) and then fails it with `processing_error` (README, "Guarantees").
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import cloudinary.exceptions
import cloudinary.uploader
import cloudinary.utils
import httpx

from shared.storage.base import Folder, StorageError, check_name, split_ref

log = logging.getLogger(__name__)
T = TypeVar("T")

ROOT_FOLDER = "neuroscan"
DELIVERY_TYPE = "authenticated"
_FETCH_TTL_S = 300
# The service said no: the same request will get the same answer.
_REFUSALS = (cloudinary.exceptions.BadRequest, cloudinary.exceptions.AuthorizationRequired,
             cloudinary.exceptions.NotAllowed, cloudinary.exceptions.NotFound,
             cloudinary.exceptions.AlreadyExists)
_FIRST_PAUSE_S = 0.5


class _Retryable(Exception):
    """A download answered with a status worth another try."""


class CloudinaryStorage:
    backend = "cloudinary"

    def __init__(self, credentials: dict[str, str], *, upload_prefix: str | None = None,
                 timeout_s: float | None = None, max_attempts: int | None = None):
        # Passed per call instead of cloudinary.config(): no process-wide state to race on.
        self._options: dict[str, Any] = {
            "cloud_name": credentials["cloud_name"],
            "api_key": credentials["api_key"],
            "api_secret": credentials["api_secret"],
        }
        if upload_prefix:
            self._options["upload_prefix"] = upload_prefix.rstrip("/")
        if timeout_s is None or max_attempts is None:
            from shared.settings import get_settings

            settings = get_settings()
            timeout_s = settings.storage_timeout_s if timeout_s is None else timeout_s
            max_attempts = settings.storage_max_attempts if max_attempts is None else max_attempts
        self._timeout = timeout_s
        self._max_attempts = max(1, max_attempts)

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, made again while it fails for a reason worth repeating (module docstring)."""
        pause = _FIRST_PAUSE_S
        for attempt in range(1, self._max_attempts + 1):
            try:
                return call()
            except _REFUSALS as exc:
                raise StorageError(f"Cloudinary {what} failed: {exc}") from exc
            except (cloudinary.exceptions.Error, OSError, httpx.HTTPError, _Retryable) as exc:
                if attempt == self._max_attempts:
                    raise StorageError(f"Cloudinary {what} failed after {attempt} tries: "
                                       f"{exc}") from exc
                log.warning("Cloudinary %s failed (try %d of %d, again in %.1fs): %s", what,
                            attempt, self._max_attempts, pause, exc)
                time.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")

    def put(self, folder: Folder, name: str, data: bytes, content_type: str) -> str:
        check_name(folder, name)
        stem, _, ext = name.rpartition(".")
        public_id = f"{ROOT_FOLDER}/{folder}/{stem or name}"
        result = self._retrying(f"upload of {public_id}", lambda: cloudinary.uploader.upload(
            io.BytesIO(data), public_id=public_id, type=DELIVERY_TYPE, overwrite=True,
            invalidate=True, resource_type="image", asset_folder=f"{ROOT_FOLDER}/{folder}",
            filename=name, timeout=self._timeout, **self._options))
        fmt = result.get("format") or ext
        return f"{self.backend}:{result.get('public_id', public_id)}.{fmt}"

    def delete(self, folder: Folder, name: str) -> None:
        check_name(folder, name)
        stem = name.rpartition(".")[0] or name
        public_id = f"{ROOT_FOLDER}/{folder}/{stem}"
        # invalidate: CDN copies go too, so a link handed out earlier stops working.
        result = self._retrying(f"delete of {public_id}", lambda: cloudinary.uploader.destroy(
            public_id, type=DELIVERY_TYPE, resource_type="image", invalidate=True,
            timeout=self._timeout, **self._options))
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
        def fetch() -> bytes:
            response = httpx.get(self.url(ref, _FETCH_TTL_S), timeout=self._timeout)
            if response.status_code in (408, 429) or response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            if response.status_code != 200:
                raise StorageError(f"Cloudinary download of {ref} failed: "
                                   f"HTTP {response.status_code}")
            return response.content

        return self._retrying(f"download of {ref}", fetch)

    def _parse(self, ref: str) -> tuple[str, str]:
        public_id, dot, fmt = split_ref(ref, self.backend).rpartition(".")
        if not dot:
            raise ValueError(f"Cloudinary ref without a format: {ref!r}")
        return public_id, fmt
