#!/usr/bin/env bash
# Install what the benchmarks need, start a throw-away PostgreSQL on loopback, and run every
# benchmark in bench/, rewriting the tables of docs/benchmarks.md and README.md (the README's
# benchmark command). Arguments go to bench/run_all.py: --only NAME[,NAME], --quick, --no-write.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install_debian_packages.sh
./scripts/bootstrap.sh dev

PERF_TEST_POSTGRES_URL="$(./scripts/start_postgres.sh | tail -n 1)"
export PERF_TEST_POSTGRES_URL

.venv/bin/python bench/run_all.py "$@"
