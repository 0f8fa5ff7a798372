#!/usr/bin/env bash
# Create .venv and install exactly what uv.lock pins: `./scripts/bootstrap.sh` for the product
# and the lab (the demo), `./scripts/bootstrap.sh dev` for the tests, linters and benchmarks too.
# Safe to run again: uv only installs what differs from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  # uv from the package registry, beside the user's Python (not inside the venv it manages)
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --user "uv>=0.9,<1"
fi
# Never download an interpreter: use the machine's Python (>= 3.11).
export UV_PYTHON_DOWNLOADS=never
case "${1:-}" in
  dev) groups=(--group dev) ;;
  # --inexact: the demo adds what it needs and removes nothing, so running it from a dev
  # environment (tests/test_demo_script.py does) leaves pytest and the linters in place.
  "") groups=(--no-dev --group lab --inexact) ;;
  *) echo "usage: $0 [dev]" >&2; exit 1 ;;
esac
uv sync --locked --quiet --python "$PYTHON" "${groups[@]}"
