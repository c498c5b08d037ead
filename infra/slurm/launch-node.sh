#!/usr/bin/env bash
# Runs on every node of a Slurm allocation (one srun task per node, see train.sbatch): starts
# `accelerate launch` with this node's machine rank. Reads:
#   SLURM_NODEID, SLURM_NNODES   from Slurm (set by hand to try it on one machine)
#   CDC_HEAD_ADDR                rendezvous host (train.sbatch: the allocation's first node)
#   CDC_MAIN_PORT                rendezvous port (default 29500; train.sbatch derives one from the job id)
#   CDC_OUTPUT_DIR               cdc/train.py --output-dir (unless the arguments are --job FILE)
#   CDC_PROCS_PER_NODE           training processes per node (default: the job's GPUs per node, or 1)
#   CDC_ACCELERATE_CONFIG        default infra/accelerate/multi-node.yaml with GPUs, cpu.yaml without
#   ACCELERATE                   the accelerate executable (default: the one on PATH)
#   SLURM_CPUS_PER_TASK          CPU threads, shared by the node's processes (default SLURM_CPUS_ON_NODE)
# Remaining arguments go to cdc/train.py, with --world-size (nodes x processes per node); without
# --job they get --output-dir "$CDC_OUTPUT_DIR" --resume latest (a requeued job continues).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${SLURM_NODEID:?not running under Slurm (SLURM_NODEID unset)}"
: "${SLURM_NNODES:?SLURM_NNODES unset}"
: "${CDC_HEAD_ADDR:?CDC_HEAD_ADDR unset (train.sbatch derives it from SLURM_JOB_NODELIST)}"
: "${CDC_OUTPUT_DIR:?CDC_OUTPUT_DIR unset}"
gpus=${SLURM_GPUS_PER_NODE:-0}
gpus=${gpus##*:}  # "a100:4" -> 4
per_node=${CDC_PROCS_PER_NODE:-$((gpus > 0 ? gpus : 1))}
if [ -z "${CDC_ACCELERATE_CONFIG:-}" ]; then
  CDC_ACCELERATE_CONFIG=infra/accelerate/multi-node.yaml
  ((gpus > 0)) || CDC_ACCELERATE_CONFIG=infra/accelerate/cpu.yaml
fi
world=$((SLURM_NNODES * per_node))
# the CPUs Slurm gave this task, shared by its processes (accelerate's default assumes a whole machine)
cpus=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
threads=$((cpus / per_node > 0 ? cpus / per_node : 1))
run=(--output-dir "$CDC_OUTPUT_DIR" --resume latest)
for arg in "$@"; do
  [ "$arg" = "--job" ] && run=()  # the spec holds the output directory and resume: latest
done

exec "${ACCELERATE:-accelerate}" launch \
  --config_file "$CDC_ACCELERATE_CONFIG" \
  --num_machines "$SLURM_NNODES" \
  --num_processes "$world" \
  --num_cpu_threads_per_process "$threads" \
  --machine_rank "$SLURM_NODEID" \
  --main_process_ip "$CDC_HEAD_ADDR" \
  --main_process_port "${CDC_MAIN_PORT:-29500}" \
  -m cdc.train --world-size "$world" "${run[@]}" "$@"
