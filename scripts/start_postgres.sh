#!/usr/bin/env bash
# Start a throw-away PostgreSQL on loopback for the tests, as a non-root user.
# Prints the SQLAlchemy URL on stdout (last line). Idempotent: reuses a running instance.
set -euo pipefail

PGPORT="${PERF_PG_PORT:-55432}"
PGDATA="${PERF_PG_DATA:-/tmp/perf_pipelines_pg}"
PGUSER_OS="${PERF_PG_OS_USER:-postgres}"
DB="perf_pipelines_test"

PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  echo "PostgreSQL server binaries not found; install the Debian package 'postgresql'" >&2
  exit 1
fi

as_pg() {
  if [ "$(id -u)" = "0" ]; then
    runuser -u "$PGUSER_OS" -- "$@"
  else
    "$@"
  fi
}

if [ "$(id -u)" = "0" ] && ! id "$PGUSER_OS" >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin "$PGUSER_OS"
fi

if ! as_pg "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PGPORT" -q 2>/dev/null; then
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    [ "$(id -u)" = "0" ] && chown "$PGUSER_OS" "$PGDATA"
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U perf --auth=trust -E UTF8 >/dev/null
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDATA -c fsync=off -c max_connections=200" start >/dev/null
fi

if ! as_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U perf -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname='$DB'" | grep -q 1; then
  as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U perf "$DB"
fi
echo "postgresql+psycopg://perf@127.0.0.1:$PGPORT/$DB"
