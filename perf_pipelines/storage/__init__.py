"""SQL storage: table definitions (SQLAlchemy Core), migrations (Alembic) and row access."""
