#!/usr/bin/env bash
# Install everything the tests need, start a throw-away PostgreSQL on loopback, and run
# lint + the whole test suite. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_debian_packages() {
  local missing=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  # Real peers for the tests: Prometheus as a metrics source, Redis for the health check.
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  # The browser check of the Dagster UI (tests/deploy/test_ui_browser.py): headless Chromium
  # driven by Playwright from PyPI, which never downloads a browser of its own.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ]; then
      echo "installing Debian packages: ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      echo "missing Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
      exit 1
    fi
  fi
}

need_debian_packages
./scripts/bootstrap.sh dev

PERF_TEST_POSTGRES_URL="$(./scripts/start_postgres.sh | tail -n 1)"
export PERF_TEST_POSTGRES_URL
export PERF_REQUIRE_POSTGRES=1

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/bandit -q -c pyproject.toml -r perf_pipelines
.venv/bin/pytest "$@"
