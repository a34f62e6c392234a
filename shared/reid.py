"""Re-identification records: the original DICOM UIDs, encrypted per tenant, for delivery only.

Results go back into the PACS under the study they came from, so the original Study, Series
and SOP Instance UIDs must survive de-identification somewhere. They are kept as AES-256-GCM
ciphertext in the database; the key is not: it is derived per tenant (HKDF-SHA256, the tenant
id as context) from DICOM_REID_KEY (or, when unset, SECRET_KEY), which lives in the
environment. A database dump alone never re-identifies a series. Only UIDs are kept: never a
name, an ID, a date or any other attribute of the patient. The tenant id is authenticated as
associated data, so one tenant's record cannot be replayed as another's.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.settings import Settings, get_settings

_CONTEXT = b"neuroscan/reid/v1/"
_NONCE_BYTES = 12


def _tenant_key(tenant_id: str, settings: Settings) -> bytes:
    master = (settings.dicom_reid_key or settings.secret_key).encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_CONTEXT + tenant_id.encode())
    return hkdf.derive(master)


def seal(tenant_id: str, record: dict[str, Any], settings: Settings | None = None) -> bytes:
    """nonce || AES-GCM(key_tenant, JSON(record), aad=tenant_id)."""
    key = _tenant_key(tenant_id, settings or get_settings())
    nonce = os.urandom(_NONCE_BYTES)
    plain = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return nonce + AESGCM(key).encrypt(nonce, plain, tenant_id.encode())


def unseal(tenant_id: str, blob: bytes, settings: Settings | None = None) -> dict[str, Any]:
    """The record; cryptography's InvalidTag when the key, tenant or bytes are not the ones
    it was sealed with."""
    key = _tenant_key(tenant_id, settings or get_settings())
    plain = AESGCM(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], tenant_id.encode())
    result: dict[str, Any] = json.loads(plain)
    return result
