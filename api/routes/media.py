"""Files in local storage, delivered only through signed, expiring links."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from api.deps import SettingsDep, StorageDep
from shared.storage import LocalStorage, signing

router = APIRouter(tags=["media"], include_in_schema=False)


@router.get("/media/{folder}/{name}")
async def get_media(folder: str, name: str, expires: int, sig: str, storage: StorageDep,
                    settings: SettingsDep) -> FileResponse:
    """The file, if the link's HMAC signature is valid and it has not expired."""
    if not isinstance(storage, LocalStorage):
        raise HTTPException(404, detail={"code": "not_found", "message": "No such file."})
    key = f"{folder}/{name}"
    problem = signing.verify(key, expires, sig, settings.secret_key)
    if problem:
        raise HTTPException(403, detail={"code": problem, "message": "The link is not valid."})
    try:
        path = storage.path_for(key)
    except ValueError:
        raise HTTPException(404, detail={"code": "not_found", "message": "No such file."}) from None
    if not path.is_file():
        raise HTTPException(404, detail={"code": "not_found", "message": "No such file."})
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if name.endswith(".dcm"):
        media_type = "application/dicom"
    # Private: the link is a credential; caches may keep it no longer than it is valid.
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "private, max-age=300"})
