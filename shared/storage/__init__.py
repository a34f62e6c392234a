"""Where images live: local disk (embedded default) or Cloudinary (`authenticated`, signed links).

`get_storage(settings)` picks the backend from the configuration. Both hand out references
(`ref`) that the database stores, and signed, expiring URLs for clients.
"""

from __future__ import annotations

from functools import lru_cache

from shared.settings import Settings, get_settings
from shared.storage.base import Folder, Storage, StorageError, ref_backend
from shared.storage.local import LocalStorage

__all__ = ["Folder", "LocalStorage", "Storage", "StorageError", "get_storage", "ref_backend",
           "topology_problem"]


def topology_problem(settings: Settings) -> str | None:
    """Why this storage cannot serve the deployment described, or None when it can.

    Local disk is one host's disk: with workers or API replicas on other hosts, a heatmap
    written by a worker there is a 404 here. Refusing to start is kinder than broken links.
    """
    if (settings.deployment_hosts > 1 and settings.cloudinary is None
            and not settings.media_dir_shared):
        return (f"DEPLOYMENT_HOSTS={settings.deployment_hosts} but images would go to local "
                f"disk ({settings.media_dir}), which the other hosts cannot read: set "
                "CLOUDINARY_URL, or mount MEDIA_DIR on every host and set MEDIA_DIR_SHARED=true "
                "(docs/operations.md, Scaling)")
    return None


def get_storage(settings: Settings | None = None) -> Storage:
    """Cloudinary when it is configured, local disk otherwise."""
    settings = settings or get_settings()
    if settings is get_settings():
        return _configured_storage()
    return _build(settings)


@lru_cache(maxsize=1)
def _configured_storage() -> Storage:
    return _build(get_settings())


def _build(settings: Settings) -> Storage:
    creds = settings.cloudinary
    if creds:
        from shared.storage.cloudinary_store import CloudinaryStorage  # SDK only when used

        return CloudinaryStorage(creds, upload_prefix=settings.cloudinary_upload_prefix)
    return LocalStorage(settings.media_dir, secret_key=settings.secret_key,
                        public_base_url=settings.public_base_url)
