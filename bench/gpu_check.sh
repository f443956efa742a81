#!/usr/bin/env bash
# One-call GPU check for a lent H100/H200: build the CUDA extension, run the GPU tests, run the
# throughput benchmarks, print a short table last. Usage (repo root): bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/sigma_fast_gpu}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/card.txt"

python -m pip install -q --no-build-isolation -e ".[test]" > "$OUT_DIR/install.log" 2>&1 \
  || { echo "install failed"; tail -40 "$OUT_DIR/install.log"; }
python -c "import sigma_fast._ext as e; print('CUDA ops built:', e.has_cuda_ops())"

python -m pytest -q -m gpu tests 2>&1 | tail -25 | tee "$OUT_DIR/gpu_tests.txt"

python -m pytest -q bench --benchmark-only --benchmark-json="$OUT_DIR/bench.json" \
  --benchmark-columns=median,ops --benchmark-sort=name 2>&1 | tail -40 > "$OUT_DIR/bench.txt"

python bench/summarize.py "$OUT_DIR/bench.json" "$(cat "$OUT_DIR/card.txt")"
