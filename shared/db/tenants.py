"""Tenants (hospitals), their users and API keys, and each tenant's webhook secret.

A key is 32 random bytes (URL-safe) behind a recognisable `nsk_` prefix. Only its SHA-256
is stored (plus a short prefix so people can tell keys apart): with that much entropy a
fast hash is enough, and lookup by hash is a single indexed equality.

A key lives until it expires (`expires_at`, from `--expires-in` or API_KEY_LIFETIME_DAYS) or
is revoked (`revoked_at`; a time in the future is a rotated key's grace period). A refused
key is told apart from an unknown one (`key_expired`, `key_revoked`), so that a hospital's
integrator knows to ask for a new key rather than to check for typos. Its id is `users.id`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from shared.db.lifecycle_models import AuditEvent
from shared.db.models import Tenant, User, utcnow
from shared.settings import Settings, get_settings

KEY_PREFIX = "nsk_"
_DISPLAY_PREFIX_LEN = 12
# last_used_at is written at most this often per key: a write per request would be the
# busiest write of the service (and SQLite has one writer).
LAST_USED_RESOLUTION = timedelta(minutes=1)

KEY_UNKNOWN = "unauthorized"
KEY_EXPIRED = "key_expired"
KEY_REVOKED = "key_revoked"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


@dataclass(frozen=True)
class IssuedKey:
    tenant: Tenant
    user: User
    key: str  # shown once; never stored


@dataclass(frozen=True)
class KeyCheck:
    """What a presented key is: `problem` None means the caller is (tenant, user)."""

    tenant: Tenant | None
    user: User | None
    problem: str | None  # KEY_UNKNOWN, KEY_EXPIRED, KEY_REVOKED

    @property
    def message(self) -> str:
        assert self.user is not None or self.problem == KEY_UNKNOWN
        if self.problem == KEY_EXPIRED:
            return (f"The API key {self.user.api_key_prefix}… expired at "  # type: ignore[union-attr]
                    f"{_iso(self.user.expires_at)}; ask your administrator for a new one.")  # type: ignore[union-attr]
        if self.problem == KEY_REVOKED:
            return (f"The API key {self.user.api_key_prefix}… was revoked at "  # type: ignore[union-attr]
                    f"{_iso(self.user.revoked_at)}; use its replacement.")  # type: ignore[union-attr]
        return "The API key is unknown."


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "?"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def generate_webhook_secret() -> str:
    return "whsec_" + secrets.token_hex(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_duration(text: str) -> timedelta | None:
    """'90d', '12h', '30m', '45s', '2w', a bare number of days; '0' or 'never': None."""
    if text.strip().lower() in ("0", "never", "none"):
        return None
    match = _DURATION.match(text.lower())
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 90d, 12h, 30m, 0 for never)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    return timedelta(seconds=seconds) if seconds > 0 else None


def default_lifetime(settings: Settings | None = None) -> timedelta | None:
    days = (settings or get_settings()).api_key_lifetime_days
    return timedelta(days=days) if days > 0 else None


def audit(session: Session, tenant_id: str | None, action: str, target: str,
          key_id: str | None = None, **detail: object) -> None:
    """One append-only row for an administrative act (who did it: the operator at the CLI)."""
    session.add(AuditEvent(tenant_id=tenant_id, key_id=key_id, action=action, target=target,
                           at=utcnow(), detail=detail or None))


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    name = name.strip()
    if not name:
        raise ValueError("a tenant needs a name")
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, webhook_secret=generate_webhook_secret())
        session.add(tenant)
        session.flush()
    return tenant


def find_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name.strip()))
    if tenant is None:
        raise LookupError(f"no tenant named {name!r}")
    return tenant


_UNSET = timedelta(0)  # "use the default lifetime" (a real lifetime is never zero)


def issue_key(session: Session, tenant_name: str, user_name: str = "api", *,
              expires_in: timedelta | None = _UNSET) -> IssuedKey:
    """Create the tenant if needed, then a user holding a new key; the caller commits.

    `expires_in`: the key's lifetime (None: it never expires; unset: API_KEY_LIFETIME_DAYS)."""
    tenant = get_or_create_tenant(session, tenant_name)
    lifetime = default_lifetime() if expires_in is _UNSET else expires_in
    key = generate_api_key()
    now = utcnow()
    user = User(tenant_id=tenant.id, name=user_name, api_key_prefix=key[:_DISPLAY_PREFIX_LEN],
                api_key_hash=hash_api_key(key), created_at=now,
                expires_at=now + lifetime if lifetime else None)
    session.add(user)
    session.flush()
    audit(session, tenant.id, "key_create", f"key:{user.id}", key_id=user.id,
          expires_at=_iso(user.expires_at) if user.expires_at else None)
    return IssuedKey(tenant=tenant, user=user, key=key)


def list_keys(session: Session, tenant_name: str | None = None) -> list[tuple[Tenant, User]]:
    """Every key (or a tenant's), oldest first; the secret itself is never stored."""
    query = select(Tenant, User).join(User, User.tenant_id == Tenant.id)
    if tenant_name:
        query = query.where(Tenant.name == tenant_name.strip())
    return [(t, u) for t, u in session.execute(query.order_by(User.created_at, User.id))]


def key_state(user: User, now: datetime | None = None) -> str:
    """active, expired, revoked, or `revoking` (rotated, inside its grace period)."""
    now = now or utcnow()
    if user.revoked_at is not None and user.revoked_at <= now:
        return "revoked"
    if user.expires_at is not None and user.expires_at <= now:
        return "expired"
    return "revoking" if user.revoked_at is not None else "active"


def find_key(session: Session, ident: str) -> User:
    """A key by its id (users.id) or its displayed prefix (`nsk_…`, unique or refused)."""
    ident = ident.strip().rstrip("…")
    user = session.get(User, ident)
    if user is not None:
        return user
    matches = list(session.scalars(select(User).where(User.api_key_prefix == ident)))
    if not matches:
        raise LookupError(f"no key with id or prefix {ident!r}")
    if len(matches) > 1:
        raise LookupError(f"{len(matches)} keys share the prefix {ident!r}; use the key id")
    return matches[0]


def revoke_key(session: Session, ident: str, *, after: timedelta | None = None) -> User:
    """Revoke a key now (or `after` from now); revoking again never moves the time later."""
    user = find_key(session, ident)
    when = utcnow() + (after or timedelta(0))
    if user.revoked_at is None or user.revoked_at > when:
        user.revoked_at = when
    session.flush()
    audit(session, user.tenant_id, "key_revoke", f"key:{user.id}", key_id=user.id,
          revoked_at=_iso(user.revoked_at))
    return user


def rotate_key(session: Session, ident: str, *, grace: timedelta | None = None,
               expires_in: timedelta | None = _UNSET) -> tuple[IssuedKey, User]:
    """A new key for the same tenant and user; the old one is revoked after `grace` (default:
    at once), so that clients can switch over without a gap."""
    old = find_key(session, ident)
    if key_state(old) in ("revoked", "expired"):
        raise ValueError(f"key {old.api_key_prefix}… is {key_state(old)}; create a new one")
    tenant = session.get(Tenant, old.tenant_id)
    assert tenant is not None
    issued = issue_key(session, tenant.name, old.name, expires_in=expires_in)
    revoke_key(session, old.id, after=grace)
    audit(session, tenant.id, "key_rotate", f"key:{old.id}", key_id=old.id,
          new_key_id=issued.user.id, grace_s=int(grace.total_seconds()) if grace else 0)
    return issued, old


def rotate_webhook_secret(session: Session, tenant_name: str) -> str:
    """A new webhook secret for the tenant (the old one stops signing at once)."""
    tenant = find_tenant(session, tenant_name)
    tenant.webhook_secret = generate_webhook_secret()
    session.flush()
    audit(session, tenant.id, "webhook_secret_rotate", f"tenant:{tenant.id}")
    return tenant.webhook_secret


def tenant_webhook_secret(session: Session, tenant_id: str) -> str | None:
    """The tenant's own webhook secret; None for tenants from before it existed."""
    return session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id))


async def check_key(session: AsyncSession, key: str, now: datetime | None = None) -> KeyCheck:
    """Who holds `key`, or why it is refused: unknown, expired or revoked."""
    if not key.startswith(KEY_PREFIX):
        return KeyCheck(None, None, KEY_UNKNOWN)
    row = (await session.execute(
        select(Tenant, User).join(User, User.tenant_id == Tenant.id)
        .where(User.api_key_hash == hash_api_key(key)))).first()
    if row is None:
        return KeyCheck(None, None, KEY_UNKNOWN)
    tenant, user = row[0], row[1]
    state = key_state(user, now)
    problem = {"revoked": KEY_REVOKED, "expired": KEY_EXPIRED}.get(state)
    return KeyCheck(tenant, user, problem)


async def authenticate(session: AsyncSession, key: str) -> tuple[Tenant, User] | None:
    """The tenant and user holding `key`, or None if unknown, expired or revoked."""
    found = await check_key(session, key)
    return None if found.problem else (found.tenant, found.user)  # type: ignore[return-value]


def last_use_due(user: User, now: datetime | None = None) -> bool:
    now = now or utcnow()
    return user.last_used_at is None or now - user.last_used_at >= LAST_USED_RESOLUTION


async def record_last_use(session: AsyncSession, key_id: str, now: datetime | None = None) -> None:
    """Stamp the key's last use (at most once per LAST_USED_RESOLUTION, whoever races); the
    caller's write session commits."""
    now = now or utcnow()
    await session.execute(
        update(User).where(User.id == key_id, or_(User.last_used_at.is_(None),
                                                   User.last_used_at < now - LAST_USED_RESOLUTION))
        .values(last_used_at=now))
