"""Dependencies every route reads like prose: `session: SessionDep, tenant: CurrentTenant`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.errors import error_response
from shared.db.models import Batch, Scan, Tenant, User
from shared.db.session import async_session_factory
from shared.db.tenants import authenticate
from shared.settings import Settings, get_settings
from shared.storage import Storage, get_storage

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer nsk_…`")


async def get_session() -> AsyncIterator[AsyncSession]:
    """The request's one session. Its connection is taken at the first query and given back
    when the handler returns (scope="function"), not after the response has been sent."""
    async with async_session_factory()() as session:
        yield session


def _configured_storage() -> Storage:
    # A wrapper without parameters: FastAPI would read get_storage's `settings` as a body.
    return get_storage()


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(_configured_storage)]


@dataclass(frozen=True)
class Principal:
    tenant: Tenant
    user: User


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, detail={"code": "unauthorized", "message": message},
                         headers={"WWW-Authenticate": "Bearer"})


def unauthorized_response(message: str) -> JSONResponse:
    return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


async def lookup_principal(key: str) -> Principal | None:
    """The key's tenant and user, in a session of its own that is closed (its connection back
    in the pool) before this returns: authentication never holds a connection."""
    async with async_session_factory()() as session:
        found = await authenticate(session, key)
    return Principal(*found) if found else None


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, as authenticated by `api.guard.RequestGuard` before the body was read."""
    principal = getattr(request.state, "principal", None)
    if isinstance(principal, Principal):
        return principal
    # Only without the guard in front (an app assembled elsewhere): the same check, here.
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("Send an API key as `Authorization: Bearer <key>`.")
    found = await lookup_principal(credentials.credentials)
    if found is None:
        raise _unauthorized("The API key is unknown or revoked.")
    return found


async def current_tenant(principal: Annotated[Principal, Depends(current_principal)]) -> Tenant:
    return principal.tenant


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
CurrentTenant = Annotated[Tenant, Depends(current_tenant)]


def _not_found(kind: str, ident: str) -> HTTPException:
    return HTTPException(404, detail={"code": "not_found", "message": f"No {kind} {ident}."})


async def get_scan_or_404(session: AsyncSession, tenant: Tenant, scan_id: str) -> Scan:
    """The tenant's scan; another tenant's scan is indistinguishable from a missing one."""
    scan = await session.scalar(select(Scan).where(
        Scan.id == scan_id, Scan.tenant_id == tenant.id))
    if scan is None:
        raise _not_found("scan", scan_id)
    return scan


async def get_batch_or_404(session: AsyncSession, tenant: Tenant, batch_id: str) -> Batch:
    batch = await session.scalar(select(Batch).where(
        Batch.id == batch_id, Batch.tenant_id == tenant.id))
    if batch is None:
        raise _not_found("batch", batch_id)
    return batch


async def scan_dep(scan_id: str, session: SessionDep, tenant: CurrentTenant) -> Scan:
    return await get_scan_or_404(session, tenant, scan_id)


async def batch_dep(batch_id: str, session: SessionDep, tenant: CurrentTenant) -> Batch:
    return await get_batch_or_404(session, tenant, batch_id)


ScanDep = Annotated[Scan, Depends(scan_dep)]
BatchDep = Annotated[Batch, Depends(batch_dep)]


def url_signer(request: Request, storage: StorageDep, settings: SettingsDep,
               principal: CurrentPrincipal) -> Callable[[str], str]:
    """refs -> signed, expiring links, absolute (relative local links get this request's host);
    bound to the caller's tenant and key (shared/storage/signing.py)."""
    base = str(request.base_url).rstrip("/")

    def sign(ref: str) -> str:
        url = storage.url(ref, settings.signed_url_ttl_s, tenant_id=principal.tenant.id,
                          key_id=principal.user.id)
        return base + url if url.startswith("/") else url

    return sign


UrlSigner = Annotated[Callable[[str], str], Depends(url_signer)]
