#!/usr/bin/env bash
# The GPU check: one of its two commands, run from the repository root on a machine with a GPU
# and no package index (benchmarks/README.md "GPU" gives the exact calls).
#
#   bash benchmarks/gpu_check.sh bench   # python -m benchmarks.gpu     -> $OUT/benchmarks-gpu.json + log
#   bash benchmarks/gpu_check.sh e2e     # python -m benchmarks.gpu_e2e -> $OUT/gpu-e2e.json + logs
#   bash benchmarks/gpu_check.sh fashion256   # python -m experiments.fashion256 -> $OUT/fashion-256.json
#                                             # (docs/results.md; carries .fashion/ too)
#   OUT=/tmp/x bash benchmarks/gpu_check.sh bench --dry-run   # anywhere: tiny sizes on the CPU
#
# First it installs, with no index, the wheels carried in .whl/ (made by `python -m
# benchmarks.gpu_wheels` on a machine with one) and the project itself (--no-deps) into
# /tmp/site, and lists any requirement of theirs the machine's own packages do not meet. A dry
# run skips the install: it runs where the project is installed already.
set -euo pipefail
mode=${1:?usage: gpu_check.sh bench|e2e|fashion256 [--dry-run]}
shift
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
py=${PYTHON:-python3}
dry=0
for arg in "$@"; do [ "$arg" = --dry-run ] && dry=1; done

if [ "$dry" = 0 ]; then
  [ -d .whl ] || { echo "no .whl/: run python -m benchmarks.gpu_wheels on a machine with a package index" >&2; exit 2; }
  start=$(date +%s)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  project=/tmp/site
  if ! "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .; then
    echo "installing the project failed (see above): its src/ is used in place" >&2
    project=$PWD/src:/tmp/site
  fi
  export PYTHONPATH=$project${PYTHONPATH:+:$PYTHONPATH}
  export PATH=/tmp/site/bin:$PATH
  "$py" -m benchmarks.gpu_wheels --check /tmp/site || echo "could not check the carried wheels' requirements" >&2
  echo "installed in $(( $(date +%s) - start )) s"
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi
export KEDRO_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1

case $mode in
  bench) "$py" -m benchmarks.gpu --json "$OUT/benchmarks-gpu.json" "$@" 2>&1 | tee "$OUT/benchmarks-gpu.log" ;;
  e2e) "$py" -m benchmarks.gpu_e2e --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu-e2e.log" ;;
  fashion256)  # Fashion-MNIST's two training files, carried in .fashion/ (docs/results.md)
    export FASHION_MNIST_DIR=${FASHION_MNIST_DIR:-$PWD/.fashion}
    "$py" -m experiments.fashion256 --out "$OUT/fashion-256.json" --workdir /tmp/fashion256 "$@" 2>&1 \
      | tee "$OUT/fashion-256.log" ;;
  *) echo "unknown mode $mode: bench, e2e or fashion256" >&2; exit 2 ;;
esac
