#!/bin/sh
# Run once by the postgres image's entrypoint, when its data volume is empty: creates Dagster's
# database (run, event-log and schedule storage) next to the agent's ($POSTGRES_DB), owned by
# DAGSTER_POSTGRES_USER (created with DAGSTER_POSTGRES_PASSWORD unless it is POSTGRES_USER).
set -eu
: "${DAGSTER_POSTGRES_DB:=dagster}"
: "${DAGSTER_POSTGRES_USER:=$POSTGRES_USER}"
: "${DAGSTER_POSTGRES_PASSWORD:=}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
  -v db="$DAGSTER_POSTGRES_DB" -v owner="$DAGSTER_POSTGRES_USER" \
  -v password="$DAGSTER_POSTGRES_PASSWORD" <<'SQL'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner') AS create_role \gset
\if :create_role
CREATE ROLE :"owner" LOGIN PASSWORD :'password';
\endif
SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') AS create_db \gset
\if :create_db
CREATE DATABASE :"db" OWNER :"owner";
\endif
SQL
