"""The audit trail of a request: routes that hand out data call `trail.read(...)` once.

    async def read_scan(scan: ScanDep, trail: AuditTrailDep) -> ScanOut:
        trail.read("result", f"scan:{scan.id}")

The row is written after the response has gone out (`shared.audit.write`, a background task
of the request); a request that fails (404, 409) records nothing, because nothing was read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, Request
from starlette.types import Scope

from api.deps import CurrentPrincipal
from shared import audit


def _correlation_id() -> str | None:
    """The id the correlation middleware (asgi-correlation-id, `shared.logs`) gave this
    request, and sends back in its `X-Request-ID` header; None without that middleware."""
    try:
        from asgi_correlation_id import correlation_id
    except ImportError:  # pragma: no cover - the middleware's package is not installed
        return None
    return correlation_id.get()


def request_id(scope: Scope | Request) -> str:
    """The request's id: the correlation middleware's, else the client's `X-Request-ID`
    (when usable), else a new one, remembered in the scope's state for the request."""
    if isinstance(scope, Request):
        scope = scope.scope
    state = scope.setdefault("state", {})
    found = audit.clean_request_id(_correlation_id())
    if found is None and isinstance(state, dict):
        found = audit.clean_request_id(state.get("request_id"))
    if found is None:
        for name, value in scope.get("headers") or []:
            if name == b"x-request-id":
                found = audit.clean_request_id(value.decode("latin-1"))
                break
    if found is None:
        found = audit.new_request_id()
    if isinstance(state, dict):
        state.setdefault("request_id", found)
    return found


@dataclass
class AuditTrail:
    """Collects the request's reads; written together once the response is out."""

    tenant_id: str
    key_id: str | None
    request_id: str
    _reads: list[audit.Read] = field(default_factory=list)

    def read(self, kind: str, target: str, *, action: str = audit.READ,
             **detail: Any) -> None:
        self._reads.append(audit.read_event(self.tenant_id, self.key_id, kind, target,
                                            request_id=self.request_id, action=action,
                                            detail=detail))

    def download(self, kind: str, target: str, **detail: Any) -> None:
        self.read(kind, target, action=audit.DOWNLOAD, **detail)

    async def flush(self) -> None:
        reads, self._reads = self._reads, []
        await audit.write(reads)


async def audit_trail(request: Request, principal: CurrentPrincipal,
                      tasks: BackgroundTasks) -> AuditTrail:
    trail = AuditTrail(tenant_id=principal.tenant.id, key_id=principal.user.id,
                       request_id=request_id(request))
    tasks.add_task(trail.flush)
    return trail


AuditTrailDep = Annotated[AuditTrail, Depends(audit_trail)]
