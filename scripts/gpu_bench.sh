#!/usr/bin/env bash
# Issue 15's GPU measurements, in two parts that each fit a lent machine's 10-minute call:
#   bash scripts/gpu_bench.sh decode   # profile of a paper training step, decode paths (paper, small-base)
#   bash scripts/gpu_bench.sh train    # today's vs the fast training path, paper preset (STEPS, default 300)
# On the lent machine (no network) the wheels its image lacks travel in .whl (see the device notes) and
# are installed first; results are copied to $OUT when it is set. Output is line-buffered so that a
# run cut off by a time limit still shows how far it got.
set -uo pipefail
case "${1:-}" in decode|train) ;; *) echo "usage: $0 decode|train" >&2; exit 2 ;; esac
if [ -d .whl ] && [ -n "${OUT:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1
out="${OUT:-$(mktemp -d)}"  # the logs; the JSON results go to benchmarks/results/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() { local log="$1"; shift; python3 "$@" 2>&1 | grep --line-buffered -v -i warn | tee "$out/$log"; }
case "${1:-}" in
  decode)
    run profile.log benchmarks/train_profile.py --device cuda
    run decode.log benchmarks/decode.py --device cuda --preset paper
    run decode-small.log benchmarks/decode.py --device cuda --name decode-cuda-small-base
    ;;
  train)
    run train.log benchmarks/train.py --compare cuda --steps "${STEPS:-300}"
    ;;
esac
[ -z "${OUT:-}" ] || cp benchmarks/results/*cuda* "$OUT"/
echo "logs in $out"
