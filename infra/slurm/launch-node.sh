#!/usr/bin/env bash
# Runs on every node of a Slurm allocation (one srun task per node): starts `accelerate launch`
# with this node's machine rank. Reads:
#   SLURM_NODEID, SLURM_NNODES          from Slurm (set by hand to test on one machine)
#   CDC_HEAD_ADDR                       rendezvous host (train.sbatch sets it from the allocation)
#   CDC_GPUS_PER_NODE                   processes per node (default 8)
#   CDC_OUTPUT_DIR                      cdc/train.py --output-dir (unless the arguments are --job FILE)
#   CDC_ACCELERATE_CONFIG               default infra/accelerate/multi-node.yaml (cpu.yaml for CPU tests)
#   CDC_MAIN_PORT                       rendezvous port (default 29500)
# Remaining arguments go to cdc/train.py, with --world-size (nodes x processes per node); without
# --job they get --output-dir "$CDC_OUTPUT_DIR" --resume latest (a requeued job continues).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${SLURM_NODEID:?not running under Slurm (SLURM_NODEID unset)}"
: "${SLURM_NNODES:?SLURM_NNODES unset}"
: "${CDC_HEAD_ADDR:?CDC_HEAD_ADDR unset (train.sbatch derives it from SLURM_JOB_NODELIST)}"
: "${CDC_OUTPUT_DIR:?CDC_OUTPUT_DIR unset}"
per_node=${CDC_GPUS_PER_NODE:-8}
world=$((SLURM_NNODES * per_node))
run=(--output-dir "$CDC_OUTPUT_DIR" --resume latest)
for arg in "$@"; do
  [ "$arg" = "--job" ] && run=()  # the spec holds the output directory and resume: latest
done
accelerate=${ACCELERATE:-accelerate}

exec "$accelerate" launch \
  --config_file "${CDC_ACCELERATE_CONFIG:-infra/accelerate/multi-node.yaml}" \
  --num_machines "$SLURM_NNODES" \
  --num_processes "$world" \
  --machine_rank "$SLURM_NODEID" \
  --main_process_ip "$CDC_HEAD_ADDR" \
  --main_process_port "${CDC_MAIN_PORT:-29500}" \
  -m cdc.train --world-size "$world" "${run[@]}" "$@"
