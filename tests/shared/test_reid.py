"""Re-identification records: sealed per tenant, unreadable with another tenant or key."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from shared import reid
from shared.settings import Settings


def test_round_trip_and_no_plaintext() -> None:
    s = Settings(secret_key="k1", dicom_reid_key="reid-master")
    record = {"study_uid": "1.2.3.4.5", "series_uid": "1.2.3.4.6"}
    blob = reid.seal("tenant-a", record, s)
    assert b"1.2.3.4.5" not in blob
    assert reid.unseal("tenant-a", blob, s) == record
    assert reid.seal("tenant-a", record, s) != blob  # a fresh nonce each time


def test_other_tenant_or_key_cannot_open() -> None:
    s = Settings(secret_key="k1", dicom_reid_key="reid-master")
    blob = reid.seal("tenant-a", {"study_uid": "1.2"}, s)
    with pytest.raises(InvalidTag):
        reid.unseal("tenant-b", blob, s)
    with pytest.raises(InvalidTag):
        reid.unseal("tenant-a", blob, Settings(secret_key="k1", dicom_reid_key="other"))
