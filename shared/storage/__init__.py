"""Where images live: local disk (embedded default) or Cloudinary (`authenticated`, signed links).

`get_storage(settings)` picks the backend from the configuration. Both hand out references
(`ref`) that the database stores, and signed, expiring URLs for clients.
"""

from __future__ import annotations

from functools import lru_cache

from shared.settings import Settings, get_settings
from shared.storage.base import Folder, Storage, StorageError, ref_backend
from shared.storage.local import LocalStorage

__all__ = ["Folder", "LocalStorage", "Storage", "StorageError", "get_storage", "ref_backend"]


def get_storage(settings: Settings | None = None) -> Storage:
    """Cloudinary when it is configured, local disk otherwise."""
    s = settings or get_settings()
    if s is get_settings():
        return _configured_storage()
    return _build(s)


@lru_cache(maxsize=1)
def _configured_storage() -> Storage:
    return _build(get_settings())


def _build(s: Settings) -> Storage:
    creds = s.cloudinary
    if creds:
        from shared.storage.cloudinary_store import CloudinaryStorage  # SDK only when used

        return CloudinaryStorage(creds, upload_prefix=s.cloudinary_upload_prefix)
    return LocalStorage(s.media_dir, secret_key=s.secret_key, public_base_url=s.public_base_url)
