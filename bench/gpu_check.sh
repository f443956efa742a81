#!/usr/bin/env bash
# One-call GPU check for a lent H100/H200: build the CUDA extension, run the GPU tests, run the
# throughput benchmarks, print a short table last. Usage (repo root): bash bench/gpu_check.sh
# Every phase has its own time limit so that one slow phase still leaves the table of the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/sigma_fast_gpu}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/card.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__)" | tee -a "$OUT_DIR/card.txt"

# The lent cards are Hopper: build for sm_90a only (CI's .ci/cuda_build.sh checks the full list).
# --no-deps: the machine has no package index; its image holds what the GPU paths import.
started=$(date +%s)
MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" \
  timeout 300 python -m pip install -q --no-deps --no-build-isolation -e . > "$OUT_DIR/install.log" 2>&1 \
  || { echo "install failed"; tail -40 "$OUT_DIR/install.log"; }
echo "build: $(( $(date +%s) - started )) s"
python -c "import sigma_fast._ext as e; print('CUDA ops built:', e.has_cuda_ops())"

# The kernel and op test files run whole on the GPU (compiled Triton, the CUDA ops); other test
# files need packages this machine lacks and have no GPU paths.
timeout 180 python -m pytest -q -p no:cacheprovider tests/test_kernels_feature_diff.py \
  tests/test_kernels_bi_attention.py tests/test_ops.py 2>&1 | tail -25 | tee "$OUT_DIR/gpu_tests.txt"

timeout 240 python -m pytest -q -p no:cacheprovider bench --benchmark-only --benchmark-json="$OUT_DIR/bench.json" \
  --benchmark-columns=median,ops --benchmark-sort=name > "$OUT_DIR/bench.txt" 2>&1
tail -15 "$OUT_DIR/bench.txt"

python bench/summarize.py "$OUT_DIR/bench.json" "$(head -1 "$OUT_DIR/card.txt")" | tee "$OUT_DIR/table.txt"
