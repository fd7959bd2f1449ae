#!/usr/bin/env bash
# `make demo`: the whole study at demo scale on this machine.
#   tracking server and dataset side by side -> 36-cell grid (local backend) -> report -> URL of the runs table
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
# The usual port when it is free; on a shared node another user's demo may hold it: then a free
# one (the last lines print the URLs). DEMO_PORT=N chooses it (0: any free port).
if [ -n "${DEMO_PORT:-}" ]; then
  PORT=$DEMO_PORT
elif "$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 5050))' 2>/dev/null; then
  PORT=5050
else
  PORT=0
  echo "port 5050 is taken (another user's demo?): the tracking server takes a free port (DEMO_PORT=N to choose one)"
fi
GRID=configs/grids/binning_vs_direct.yaml
JOBS=${DEMO_JOBS:-2}
start=$(date +%s)

export MLFLOW_EXPERIMENT_NAME=${MLFLOW_EXPERIMENT_NAME:-4t-tokenization}
# The server starts in the background while the dataset is generated (numpy on one core, the
# server's imports on the other: ~15 s each); the dataset is logged once the server is up (the
# second generate finds the file its card describes and logs it without generating it again).
# (serve's default of 4 workers even for 2 jobs: with 2, the cells waited on the server and the
# grid took 149 s instead of 128 s, more than the 6 s their start-up saves)
SERVE_OUT=$(mktemp)
trap 'rm -f "$SERVE_OUT"' EXIT
"$BIN/thesis-mlflow" serve --root mlflow-server --port "$PORT" --background >"$SERVE_OUT" 2>&1 &
SERVE=$!
NEW_DATA=0
if [ ! -f data/4tops_synthetic.h5 ]; then
  NEW_DATA=1
  "$BIN/thesis-mlflow" generate --output data/4tops_synthetic.h5 --no-log || { wait "$SERVE" || true; exit 1; }
fi
if ! wait "$SERVE"; then
  # serve's own reason as the last line (it ran in the background, beside the dataset's output)
  grep -v '^\s*$' "$SERVE_OUT" | head -n -1 >&2 || true
  more=""; [ mlflow-server/server.log -nt "$SERVE_OUT" ] && more=" (more in mlflow-server/server.log)"  # written by this start, not an old one
  echo "the tracking server did not start: $(grep -v '^\s*$' "$SERVE_OUT" | tail -n 1)$more" >&2
  exit 1
fi
cat "$SERVE_OUT"
MLFLOW_TRACKING_URI=$(cat mlflow-server/server.url)
export MLFLOW_TRACKING_URI
if [ "$NEW_DATA" = 1 ]; then
  "$BIN/thesis-mlflow" generate --output data/4tops_synthetic.h5
fi
# --allow-dirty: a demo of code being edited is fine (the diff is recorded on the grid's parent run)
"$BIN/thesis-mlflow" grid run "$GRID" --backend local --scale demo --jobs "$JOBS" --allow-dirty
# the report ends with the runs table's address and the saved views (no second process to print them)
"$BIN/thesis-mlflow" report --grid binning_vs_direct-demo

echo
echo "Demo finished in $(( $(date +%s) - start )) s (wall time)."
echo "Summary: dashboards/binning_vs_direct-demo/summary.html; the MLflow UI: the links above"
[ -f mlflow-server/credentials ] && echo "  the browser asks for the login: user admin, password in mlflow-server/credentials"
echo "The server keeps running for the UI; stop it with: $BIN/thesis-mlflow serve --root mlflow-server --stop"
