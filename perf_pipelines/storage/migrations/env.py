"""Alembic environment: runs on the connection handed over by `perf_pipelines.storage.db`."""

from alembic import context

from perf_pipelines.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `perf-pipelines db upgrade`, not bare alembic")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
