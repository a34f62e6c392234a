"""Local disk under MEDIA_DIR, delivered by the API's `/media/...` route behind signed links."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from shared.storage import signing
from shared.storage.base import Folder, StorageError, check_name, split_ref

MEDIA_ROUTE = "/media"


class LocalStorage:
    backend = "local"

    def __init__(self, root: str | Path, *, secret_key: str, public_base_url: str | None = None):
        self.root = Path(root)
        self._secret = secret_key
        self._base = (public_base_url or "").rstrip("/")

    def put(self, folder: Folder, name: str, data: bytes, content_type: str) -> str:
        check_name(folder, name)
        target = self.root / folder / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename: a retried task replaces the file whole, never half-written.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"could not write {target}: {exc}") from exc
        return f"{self.backend}:{folder}/{name}"

    def path_for(self, key: str) -> Path:
        """The file behind `folder/name`; refuses anything outside the media root."""
        folder, _, name = key.partition("/")
        check_name(folder, name)
        return self.root / folder / name

    def get(self, ref: str) -> bytes:
        path = self.path_for(split_ref(ref, self.backend))
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc}") from exc

    def delete(self, folder: Folder, name: str) -> None:
        check_name(folder, name)
        try:
            (self.root / folder / name).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"could not delete {folder}/{name}: {exc}") from exc

    def url(self, ref: str, ttl_s: int, *, tenant_id: str = "", key_id: str = "") -> str:
        """A signed link bound to `tenant_id` (and the key it is handed to): the media route
        serves it only for a file of that tenant's scans (shared/storage/signing.py)."""
        key = split_ref(ref, self.backend)
        expires = signing.expiry(ttl_s)
        sig = signing.sign(key, expires, self._secret, tenant_id=tenant_id, key_id=key_id)
        query = urlencode({"expires": expires, "t": tenant_id, "k": key_id, "sig": sig})
        # Relative unless PUBLIC_BASE_URL is set; the API makes it absolute per request.
        return f"{self._base}{MEDIA_ROUTE}/{key}?{query}"
