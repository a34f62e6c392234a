"""The storage interface shared by every backend."""

from __future__ import annotations

import re
from typing import Literal, Protocol, runtime_checkable

Folder = Literal["uploads", "results"]
FOLDERS: tuple[Folder, ...] = ("uploads", "results")

# Deterministic names (scan id + suffix) are all we ever write; refuse anything path-like.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class StorageError(Exception):
    """Storing or fetching failed (network, service, disk): worth retrying."""


@runtime_checkable
class Storage(Protocol):
    """Put bytes, get them back, and hand out signed links that expire."""

    backend: str

    def put(self, folder: Folder, name: str, data: bytes, content_type: str) -> str:
        """Store `data` as `folder/name`, replacing what was there; returns the ref to keep."""
        ...

    def get(self, ref: str) -> bytes:
        ...

    def url(self, ref: str, ttl_s: int, *, tenant_id: str = "", key_id: str = "") -> str:
        """A link that works without other credentials for `ttl_s` seconds, for the tenant
        (and API key) it is made for; local links are bound to them, Cloudinary's by its own
        signature of the asset."""
        ...

    def delete(self, folder: Folder, name: str) -> None:
        """Remove `folder/name` (the name `put` was given); nothing there is not an error."""
        ...


def check_name(folder: str, name: str) -> None:
    if folder not in FOLDERS:
        raise ValueError(f"unknown storage folder {folder!r}")
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"unsafe storage name {name!r}")


def ref_backend(ref: str) -> str:
    """The backend a ref belongs to (`local`, `cloudinary`)."""
    backend, sep, _ = ref.partition(":")
    if not sep:
        raise ValueError(f"not a storage ref: {ref!r}")
    return backend


def split_ref(ref: str, backend: str) -> str:
    found, _, key = ref.partition(":")
    if found != backend or not key:
        raise ValueError(f"{ref!r} is not a {backend} ref")
    return key
