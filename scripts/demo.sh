#!/usr/bin/env bash
# The embedded default end to end: SQLite, a simulated mixed fleet on loopback, one
# optimization_cycle run, then the Dagster UI on http://127.0.0.1:3000 (Ctrl-C stops all).
# DEMO_NO_UI=1 stops after the run (used by the tests of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh

export PERF_HOME="${PERF_HOME:-$PWD/.perf_home}"
export DAGSTER_HOME="${DAGSTER_HOME:-$PERF_HOME/dagster}"
export PERF_TARGETS="${PERF_TARGETS:-$PERF_HOME/targets.yaml}"
FLEET_PORT="${FLEET_PORT:-9400}"
mkdir -p "$DAGSTER_HOME/.nux"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
echo "seen: 1" >"$DAGSTER_HOME/.nux/nux.yaml"  # skip the UI's first-visit newsletter pop-up

.venv/bin/perf-pipelines fleet --scenario mixed --port "$FLEET_PORT" \
  --write-targets "$PERF_TARGETS" >"$PERF_HOME/fleet.log" 2>&1 &
FLEET_PID=$!
trap 'kill $FLEET_PID 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  [ -s "$PERF_TARGETS" ] && curl -fs "http://127.0.0.1:$FLEET_PORT/" >/dev/null 2>&1 && break
  kill -0 "$FLEET_PID" 2>/dev/null || { cat "$PERF_HOME/fleet.log"; exit 1; }
  sleep 0.2
done
echo "simulated fleet on http://127.0.0.1:$FLEET_PORT, targets in $PERF_TARGETS"

.venv/bin/perf-pipelines db upgrade
.venv/bin/dagster job execute -m perf_pipelines.definitions -j optimization_cycle

if [ "${DEMO_NO_UI:-0}" = "1" ]; then
  exit 0
fi
echo "Dagster UI on http://127.0.0.1:3000 (Ctrl-C to stop)"
.venv/bin/dagster dev -m perf_pipelines.definitions -h 127.0.0.1 -p 3000
