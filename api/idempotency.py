"""`Idempotency-Key` on POST /v1/scans and POST /v1/batches: a retry never makes a second scan.

A client that did not get an answer (a timeout, a dropped connection, a 5xx from a proxy)
cannot know whether its upload was stored. With the same key, its retry gets the first
answer again: same status, same body, same ids, and the header `Idempotent-Replayed: true`.

- The key is remembered per tenant, with a fingerprint of what the request asked (route,
  each file's name and SHA-256, `callback_url`, `frame`; not the multipart boundary, which
  clients change on every try), for IDEMPOTENCY_KEY_TTL_S.
- The same key with a different request is refused, 422 `idempotency_key_reused`.
- The record is written in the transaction that stores the scans: it exists exactly when the
  scans do. Two requests racing with one key both do the checks, but only one commits (the
  primary key decides); the other's transaction is rolled back and it answers the winner's
  response. A refused request (4xx) stores nothing, so its retry is judged afresh.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.idempotency_models import IdempotencyKey
from shared.db.models import utcnow
from shared.db.session import async_session_factory
from shared.errors import InputError
from shared.settings import Settings

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
INVALID_KEY = "invalid_idempotency_key"
KEY_REUSED = "idempotency_key_reused"
DOC = ("Optional. One key per submission (a UUID), sent again on every retry of it: a retry "
       "gets the first answer (same ids, header `Idempotent-Replayed: true`), never a second "
       "scan. The same key with a different request: 422 `idempotency_key_reused`.")
# Visible ASCII: a UUID, a ULID, an order number; nothing a log line or a header could mangle.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def check_key(value: str | None) -> str | None:
    """The key as given, or None when the header is absent; 400 when it is malformed."""
    if value is None:
        return None
    if not _KEY.fullmatch(value):
        raise InputError(f"{HEADER} must be 1 to 255 visible ASCII characters (a UUID, say).",
                         code=INVALID_KEY, http_status=400)
    return value


def fingerprint(route: str, files: Sequence[tuple[str | None, bytes | str]],
                **fields: Any) -> str:
    """SHA-256 over what the request asks: the route, each file as (name, bytes or their
    SHA-256 hex digest), and the form fields."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"route": route, **fields}, sort_keys=True, default=str).encode())
    for name, data in files:
        sha = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else data
        digest.update(json.dumps([name, sha]).encode())
    return digest.hexdigest()


async def replay(tenant_id: str, key: str, route: str, print_: str) -> JSONResponse | None:
    """The stored answer for this key (None if there is none, or it expired); 422 when the
    key was used for a different request."""
    async with async_session_factory()() as session:
        record = await session.scalar(select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
            IdempotencyKey.expires_at > utcnow()))
    if record is None:
        return None
    if record.route != route or record.fingerprint != print_:
        raise InputError(
            f"This {HEADER} was already used for a different request (another file, field or "
            "route). Use a new key for a new submission; reuse a key only to retry.",
            code=KEY_REUSED, http_status=422)
    return JSONResponse(record.response, status_code=record.status_code,
                        headers={REPLAYED_HEADER: "true"})


async def remember(session: AsyncSession, tenant_id: str, key: str, route: str, print_: str,
                   status_code: int, answer: BaseModel, settings: Settings) -> None:
    """Add the record to the submission's transaction (not committed). This tenant's expired
    keys go first, so an old key can be used again and the table stays small."""
    now = utcnow()
    await session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.expires_at <= now))
    session.add(IdempotencyKey(
        tenant_id=tenant_id, key=key, route=route, fingerprint=print_, status_code=status_code,
        response=answer.model_dump(mode="json"), created_at=now,
        expires_at=now + timedelta(seconds=settings.idempotency_key_ttl_s)))
