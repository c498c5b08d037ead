#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, in parts run in the order given (each within 10 minutes):
#   bash scripts/gpu_bench.sh profile       # profile of a paper training step (eager)
#   bash scripts/gpu_bench.sh decode        # decode paths, paper preset (untrained) and small-base (trained)
#   bash scripts/gpu_bench.sh decode-small  # the small-base decode paths alone (PSNR change against fp32)
#   bash scripts/gpu_bench.sh train         # today's vs the fast training paths, paper preset
#   bash scripts/gpu_bench.sh check         # the CUDA-only tests (files coded on the GPU decode on the CPU and back)
# train reads STEPS (default 300), RUNS (benchmarks/train.py --runs; default all) and EARLY (--early-steps).
# On a machine without network access the wheels its image lacks travel in .whl and
# are installed first. When $OUT is set, every JSON result is also written there as it is made (so a
# run cut off by a time limit still returns what it finished), and the profiler trace is copied
# at the end. Output is line-buffered so that a cut-off run still shows how far it got.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: $0 profile|decode|decode-small|train|check ..." >&2; exit 2; }
if [ -d .whl ] && [ -n "${OUT:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
[ -z "${OUT:-}" ] || export CDC_BENCH_COPY="$OUT"
export PYTHONUNBUFFERED=1
out="${OUT:-$(mktemp -d)}"  # the logs; the JSON results go to benchmarks/results/
started="$(mktemp)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run() { local log="$1"; shift; python3 "$@" 2>&1 | grep --line-buffered -v -i warn | tee "$out/$log"; }
for part in "$@"; do
  case "$part" in
    profile) run profile.log benchmarks/train_profile.py --device cuda ;;
    decode|decode-small)
      [ "$part" = decode-small ] || run decode.log benchmarks/decode.py --device cuda --preset paper
      run decode-small.log benchmarks/decode.py --device cuda --name decode-cuda-small-base ;;
    train) run train.log benchmarks/train.py --compare cuda --steps "${STEPS:-300}" \
             --runs "${RUNS:-today,control,fast,fast-graphs,fast-big}" --early-steps "${EARLY:-30}" ;;
    check) python3 -m pytest -q -p no:cacheprovider tests/test_codec.py -k "gpu or convolution or float64" 2>&1 \
             | tee "$out/check.log" ;;
    *) echo "unknown part: $part" >&2; exit 2 ;;
  esac
done
[ -z "${OUT:-}" ] || find benchmarks/results -name '*cuda*.gz' -newer "$started" -exec cp {} "$OUT"/ \;
echo "logs in $out"
