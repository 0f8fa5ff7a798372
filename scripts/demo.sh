#!/usr/bin/env bash
# The embedded default end to end: SQLite, a simulated mixed fleet on loopback, one
# optimization_cycle run, then the Dagster UI on http://127.0.0.1:$UI_PORT (Ctrl-C stops all).
# FLEET_PORT (9400) and UI_PORT (3000) choose the ports; DEMO_NO_UI=1 stops after the run (used
# by the tests of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh

export PERF_HOME="${PERF_HOME:-$PWD/.perf_home}"
export DAGSTER_HOME="${DAGSTER_HOME:-$PERF_HOME/dagster}"
export PERF_TARGETS="${PERF_TARGETS:-$PERF_HOME/targets.yaml}"
FLEET_PORT="${FLEET_PORT:-9400}"
UI_PORT="${UI_PORT:-3000}"

# The terminal's stderr, kept as fd 3: the Ctrl-C trap may run inside a step whose output goes to
# a log file (the UI's), and its one line must still reach the user.
exec 3>&2
die() {
  echo "error: $*" >&3
  exit 3
}

# Each child runs in a session of its own, so Ctrl-C reaches only this script, which stops
# the children's whole process groups in order: one line, no Python traceback from any of them.
CHILDREN=()
start() {
  setsid "$@" 3>&- &
  CHILDREN+=("$!")
}
stop_children() {
  trap - INT TERM EXIT
  local pid deadline=$((SECONDS + 8))
  for pid in "${CHILDREN[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${CHILDREN[@]}"; do
    while kill -0 -- "-$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap 'echo "demo stopped" >&3; stop_children; exit 130' INT
trap 'echo "demo stopped" >&3; stop_children; exit 143' TERM
trap stop_children EXIT

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ "${DEMO_NO_UI:-0}" != "1" ] && port_taken "$UI_PORT"; then
  die "port $UI_PORT (the Dagster UI) is taken by another program: stop it or set UI_PORT"
fi

mkdir -p "$DAGSTER_HOME/.nux"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
echo "seen: 1" >"$DAGSTER_HOME/.nux/nux.yaml" # skip the UI's first-visit newsletter pop-up
rm -f "$PERF_TARGETS" # a targets file left by an earlier run must not be mistaken for this one's

# The simulator binds its port before it writes the targets file, and exits with one line when
# the port is taken.
start .venv/bin/perf-pipelines fleet --scenario mixed --port "$FLEET_PORT" \
  --write-targets "$PERF_TARGETS" >"$PERF_HOME/fleet.log" 2>&1
FLEET_PID="${CHILDREN[0]}"
until [ -s "$PERF_TARGETS" ]; do
  if ! kill -0 "$FLEET_PID" 2>/dev/null; then
    # The simulator's own one-line error, else its whole log (something unforeseen).
    grep '^error:' "$PERF_HOME/fleet.log" >&2 && exit 3
    cat "$PERF_HOME/fleet.log" >&2
    die "the fleet simulator did not start on port $FLEET_PORT (log above)"
  fi
  sleep 0.1
done
# What answers on the port must be the simulator just started, not another program.
if ! curl -fsS --max-time 5 "http://127.0.0.1:$FLEET_PORT/" 2>/dev/null |
  .venv/bin/python -c 'import json, sys; answer = json.load(sys.stdin)
sys.exit(answer.get("service") != "perf-lab fleet simulator" or answer.get("pid") != int(sys.argv[1]))' \
    "$FLEET_PID" 2>/dev/null; then
  die "port $FLEET_PORT does not answer as the simulator this demo started (set FLEET_PORT)"
fi
echo "simulated fleet on http://127.0.0.1:$FLEET_PORT, targets in $PERF_TARGETS"

in_child() {
  start "$@"
  wait "${CHILDREN[-1]}"
}
in_child .venv/bin/perf-pipelines db upgrade
in_child .venv/bin/dagster job execute -m perf_pipelines.definitions -j optimization_cycle

if [ "${DEMO_NO_UI:-0}" = "1" ]; then
  exit 0
fi
echo "Dagster UI on http://127.0.0.1:$UI_PORT (log: $PERF_HOME/dagster-dev.log; Ctrl-C stops)"
# workspace.yaml names the code location `perf_pipelines` (with -m the UI would call it by the
# module's name).
in_child .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p "$UI_PORT" \
  >"$PERF_HOME/dagster-dev.log" 2>&1
