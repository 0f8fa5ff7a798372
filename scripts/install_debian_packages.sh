#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks run against, when they are missing:
# PostgreSQL (a real database), Prometheus (a real metrics source and the collector's peer in
# bench/), Redis (the health check's cache), Chromium (the browser check of the Dagster UI,
# driven by Playwright from PyPI, which never downloads a browser of its own) and wrk (the
# sidecar's load generator in bench/). Root installs them; anyone else is told the command.
set -euo pipefail

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# the lab's llama-server build (perf-pipelines llama-server build) and its tests compile C++
command -v g++ >/dev/null 2>&1 || missing+=(g++)
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
