#!/usr/bin/env bash
# Install everything the tests need, start a throw-away PostgreSQL on loopback, and run
# lint + the whole test suite. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install_debian_packages.sh
./scripts/bootstrap.sh dev

PERF_TEST_POSTGRES_URL="$(./scripts/start_postgres.sh | tail -n 1)"
export PERF_TEST_POSTGRES_URL
export PERF_REQUIRE_POSTGRES=1

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
VIRTUAL_ENV="$PWD/.venv" .venv/bin/dg check defs  # the code location loads ([tool.dg] in pyproject)
.venv/bin/bandit -q -c pyproject.toml -r perf_pipelines lab/perf_lab
.venv/bin/pytest "$@"
