"""Read audit: audit_events becomes append-only; tenant_privacy holds the file-name opt-in.

`audit_events` (revision 0006) already has what a read needs (tenant, key id, action, target,
time, request id, detail); from here on every read or download of a result, report, FHIR
document or image adds a row (`shared/audit.py`). Triggers refuse UPDATE and DELETE on it
(TRUNCATE too, on PostgreSQL): the log is append-only for every connection, the application's
included. Audit rows are never purged by retention; an operator who must archive old rows
does it by hand as the table's owner (docs/operations.md, "Audit log").

`tenant_privacy.share_filenames`: a tenant's opt-in to client file names in PDF reports and
webhook payloads (default: kept out); `neuroscan privacy --tenant NAME --share-filenames`.

Revision ID: 0009_read_audit
Revises: 0006_data_lifecycle
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_read_audit"
down_revision: str | None = "0006_data_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "tenant_privacy",
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("share_filenames", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute("CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON "
                   "audit_events FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()")
        op.execute("CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON "
                       f"audit_events BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: "
                       f"{verb} refused'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    op.drop_table("tenant_privacy")
