#!/usr/bin/env bash
# Entry points of the cdc-pipeline image:
#   cdc ...                       the codec CLI (compress, decompress, eval, models, ...)
#   train ...                     accelerate launch -m cdc.train ... (ACCELERATE_CONFIG picks infra/accelerate/*.yaml)
#   worker [POOL]                 a Prefect process worker (default pool cdc-process)
#   prefect|mlflow|accelerate|python ...   those tools
set -euo pipefail
cmd=${1:-cdc}
shift || true
case "$cmd" in
  train)
    exec accelerate launch --config_file "${ACCELERATE_CONFIG:-infra/accelerate/single-gpu.yaml}" -m cdc.train "$@" ;;
  worker)
    exec prefect worker start --pool "${1:-cdc-process}" --type process --with-healthcheck ;;
  cdc|prefect|mlflow|accelerate|python|bash|sh)
    exec "$cmd" "$@" ;;
  *)
    echo "unknown command '$cmd' (cdc | train | worker | prefect | mlflow | accelerate | python)" >&2
    exit 2 ;;
esac
