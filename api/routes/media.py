"""Files in local storage, delivered only through signed, expiring links bound to a tenant.

A link carries the tenant it was made for (`t`) and the key it was handed to (`k`), signed
with the path and expiry (shared/storage/signing.py). The file is served only when the
signature holds, the link names a tenant, and the file belongs to a scan of that tenant;
each download is written to the audit log under that tenant and key.
"""

from __future__ import annotations

import mimetypes
import re

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from sqlalchemy import select
from starlette.background import BackgroundTask

from api.audit import request_id
from api.deps import SessionDep, SettingsDep, StorageDep
from shared import audit
from shared.db.models import Scan
from shared.db.session import release
from shared.storage import LocalStorage, signing

router = APIRouter(tags=["media"], include_in_schema=False)

# Every stored name starts with its scan's id: `<id>.<ext>` or `<id>-<suffix>.png`.
_SCAN_NAME = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})[.-]")


def _missing() -> HTTPException:
    return HTTPException(404, detail={"code": "not_found", "message": "No such file."})


@router.get("/media/{folder}/{name}")
async def get_media(folder: str, name: str, expires: int, sig: str, request: Request,
                    session: SessionDep, storage: StorageDep, settings: SettingsDep,
                    t: str = "", k: str = "") -> FileResponse:
    """The file, if the link's HMAC signature is valid, it has not expired, and the file is
    one of the link's tenant's."""
    if not isinstance(storage, LocalStorage):
        raise _missing()
    key = f"{folder}/{name}"
    problem = signing.verify(key, expires, sig, settings.secret_key, tenant_id=t, key_id=k)
    if problem is None and not t:
        problem = "link_not_bound"  # made without a tenant: no link the API hands out
    if problem:
        raise HTTPException(403, detail={"code": problem, "message": "The link is not valid."})
    try:
        path = storage.path_for(key)
    except ValueError:
        raise _missing() from None
    match = _SCAN_NAME.match(name)
    owner = None
    if match:
        owner = await session.scalar(select(Scan.id).where(
            Scan.id == match.group(1), Scan.tenant_id == t))
    await release(session)
    if owner is None or not path.is_file():
        raise _missing()
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(".dcm"):
        media_type = "application/dicom"
    read = audit.read_event(t, k or None, "image", f"scan:{owner}", action=audit.DOWNLOAD,
                            request_id=request_id(request), detail={"file": key})
    # Private: the link is a credential; caches may keep it no longer than it is valid.
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "private, max-age=300"},
                        background=BackgroundTask(audit.write, [read]))
