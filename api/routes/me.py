"""Who am I: the tenant and user behind the API key."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentPrincipal
from shared.schemas import MeOut, TenantOut, UserOut

router = APIRouter(prefix="/v1", tags=["account"])


@router.get("/me", response_model=MeOut, summary="The caller's tenant and user")
async def read_me(principal: CurrentPrincipal) -> MeOut:
    """The hospital (tenant) and user that the API key belongs to."""
    t, u = principal.tenant, principal.user
    return MeOut(tenant=TenantOut(id=t.id, name=t.name),
                 user=UserOut(id=u.id, name=u.name, api_key_prefix=u.api_key_prefix,
                              created_at=u.created_at, expires_at=u.expires_at))
