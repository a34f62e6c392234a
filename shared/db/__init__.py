"""Database models, sessions, migrations and tenant/API-key logic (SQLAlchemy 2, Alembic)."""
