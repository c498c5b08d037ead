#!/usr/bin/env bash
# Local services on loopback: a Prefect server, a Prefect process worker and an MLflow server.
#   scripts/serve.sh start   # starts them, creates the work pool, deploys prefect.yaml's deployments
#   scripts/serve.sh stop    # stops them (by PID, whole process groups)
# Settings (environment): CDC_HOME (state, default ./.cdc), PREFECT_PORT (4200), MLFLOW_PORT (5000), BIN (.venv/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
CDC_HOME=$(realpath -m "${CDC_HOME:-.cdc}")
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
BIN=${BIN:-.venv/bin}
RUN="$CDC_HOME/serve"
export PREFECT_HOME="$CDC_HOME/prefect"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false

launch() {  # name, command...: run detached in its own process group, remember the PID
  local name=$1
  shift
  setsid "$@" >"$RUN/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
}

wait_for() {  # url, name
  for _ in $(seq 1 120); do
    if curl -sf "$1" >/dev/null; then return 0; fi
    sleep 1
  done
  echo "serve: $2 did not come up; see $RUN/$2.log" >&2
  return 1
}

start() {
  mkdir -p "$RUN" "$CDC_HOME/mlflow-artifacts" "$PREFECT_HOME"
  launch prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  launch mlflow-server "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$CDC_HOME/mlflow-server.db" --artifacts-destination "$CDC_HOME/mlflow-artifacts"
  wait_for "$PREFECT_API_URL/health" prefect-server
  wait_for "http://127.0.0.1:$MLFLOW_PORT/health" mlflow-server
  "$BIN/prefect" work-pool create cdc-process --type process --overwrite >/dev/null
  "$BIN/prefect" --no-prompt deploy --name train-grid/local --name train-grid/slurm --name shard-corpus/local \
    --name evaluate/local >"$RUN/deploy.log" 2>&1 || { cat "$RUN/deploy.log" >&2; exit 1; }
  launch prefect-worker "$BIN/prefect" worker start --pool cdc-process --type process
  cat <<EOT
Prefect UI  http://127.0.0.1:$PREFECT_PORT    MLflow UI  $MLFLOW_TRACKING_URI
export PREFECT_API_URL=$PREFECT_API_URL MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI
prefect deployment run train-grid/local --param lmbdas='[0.01,0.05]' --param rhos='[0,0.9]' --watch
EOT
}

stop() {
  for pidfile in "$RUN"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
