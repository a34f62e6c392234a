"""Tenants (hospitals), their users and API keys.

A key is 32 random bytes (URL-safe) behind a recognisable `nsk_` prefix. Only its SHA-256
is stored (plus a short prefix so people can tell keys apart): with that much entropy a
fast hash is enough, and lookup by hash is a single indexed equality.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from shared.db.models import Tenant, User

KEY_PREFIX = "nsk_"
_DISPLAY_PREFIX_LEN = 12


@dataclass(frozen=True)
class IssuedKey:
    tenant: Tenant
    user: User
    key: str  # shown once; never stored


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    name = name.strip()
    if not name:
        raise ValueError("a tenant needs a name")
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def issue_key(session: Session, tenant_name: str, user_name: str = "api") -> IssuedKey:
    """Create the tenant if needed, then a user holding a new key; the caller commits."""
    tenant = get_or_create_tenant(session, tenant_name)
    key = generate_api_key()
    user = User(tenant_id=tenant.id, name=user_name, api_key_prefix=key[:_DISPLAY_PREFIX_LEN],
                api_key_hash=hash_api_key(key))
    session.add(user)
    session.flush()
    return IssuedKey(tenant=tenant, user=user, key=key)


async def authenticate(session: AsyncSession, key: str) -> tuple[Tenant, User] | None:
    """The tenant and user holding `key`, or None if unknown or revoked."""
    if not key.startswith(KEY_PREFIX):
        return None
    row = (await session.execute(
        select(Tenant, User)
        .join(User, User.tenant_id == Tenant.id)
        .where(User.api_key_hash == hash_api_key(key), User.revoked_at.is_(None))
    )).first()
    return (row[0], row[1]) if row else None
