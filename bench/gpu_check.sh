#!/usr/bin/env bash
# One-call GPU check for a lent H100/H200 (issues 11, 12, 14): build the CUDA extension, run the
# compile gate with the card's Triton, run the GPU tests, run the throughput benchmarks (the core and
# training, the fused kernels at production shapes, annotate end to end with the decoders side by
# side), profile the core, print a short table last. Usage (repo root): bash bench/gpu_check.sh   (writes under $OUT, else /tmp/sigma_fast_gpu)
# Every phase has its own time limit (80 + 30 + 70 + 30 + 130 + 70 + 50 + 15 s = 475 s in all,
# which leaves a 15-minute device budget room for the machine's start and one retry) so that
# one slow phase still leaves the results of the others; pytest phases get SIGINT first, so that
# pytest-benchmark still writes the JSON of the rows that finished. The benchmark JSONs are
# merged into one run JSON (the name bench/runs/ keeps it under).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/sigma_fast_gpu}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/card.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__,
'transformers', transformers.__version__)" | tee -a "$OUT_DIR/card.txt"
CARD="$(head -1 "$OUT_DIR/card.txt" | cut -d, -f1 | sed 's/^NVIDIA //; s/[^A-Za-z0-9]\+/_/g')"
RUN_JSON="$OUT_DIR/$(date -u +%F)_${CARD}.json"  # the name bench/runs/ keeps it under

exec 3>&1  # phase reports go to the script's stdout even from a redirected or piped phase
phase() {  # phase NAME SECONDS COMMAND...: run with a time limit, report its time and status
  local name="$1" limit="$2" started status
  shift 2
  started=$(date +%s)
  timeout -s INT -k 15 "$limit" "$@"
  status=$?
  echo "== $name: $(( $(date +%s) - started )) s, exit $status$([ "$status" = 124 ] && echo ' (timed out)')" >&3
  return "$status"
}

# The lent cards are Hopper: build for sm_90a only (CI's .ci/cuda_build.sh checks the full list).
# --no-deps: the machine has no package index; its image holds what the GPU paths import.
export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
phase build 80 python -m pip install -q --no-deps --no-build-isolation -e . > "$OUT_DIR/install.log" 2>&1 \
  || { echo "install failed"; tail -40 "$OUT_DIR/install.log"; }
python -c "import sigma_fast._ext as e; print('CUDA ops built:', e.has_cuda_ops())"

# The compile gate with this machine's Triton (CI runs it with its own): sm_90a and sm_80 at once.
phase "compile gate" 30 python bench/compile_check.py --json "$OUT_DIR/compile_check.json" \
  > "$OUT_DIR/compile_check.txt" 2>&1
grep -e "FAIL" -e "kernels compiled" "$OUT_DIR/compile_check.txt" | head -12

# GPU tests. Run whole: the kernel and op files (their kernels run on CUDA tensors when a GPU is
# there) and the decoder's. Run with -m gpu only: every other test file with gpu-marked tests
# (the rest of those files needs packages this machine lacks, or full-size CPU runs).
WHOLE=(tests/test_kernels_*.py tests/test_ops.py tests/test_decoder.py)
mapfile -t MARKED < <(grep -l "pytest.mark.gpu" tests/test_*.py | grep -v -e "tests/test_kernels_" \
  -e "tests/test_ops.py" -e "tests/test_decoder.py")
echo "GPU test files, whole: ${WHOLE[*]}"
echo "GPU test files, -m gpu: ${MARKED[*]}"
phase "tests (whole files)" 70 python -m pytest -q -p no:cacheprovider "${WHOLE[@]}" 2>&1 \
  | tail -25 | tee "$OUT_DIR/gpu_tests.txt"
phase "tests (-m gpu)" 30 python -m pytest -q -p no:cacheprovider -m gpu "${MARKED[@]}" 2>&1 \
  | tail -15 | tee -a "$OUT_DIR/gpu_tests.txt"

# Benchmarks: the core and training (their ratios need the baselines of the same process), then the
# fused kernels at production shapes (bench/shapes.py), each op's baseline before its fused row.
phase "benchmarks (core, train)" 130 python -m pytest -q -p no:cacheprovider bench/bench_core.py bench/bench_train.py \
  --benchmark-only --benchmark-json="$OUT_DIR/bench_core.json" --benchmark-columns=median,ops \
  --benchmark-sort=name > "$OUT_DIR/bench_core.txt" 2>&1
tail -8 "$OUT_DIR/bench_core.txt"
phase "benchmarks (kernels)" 70 python -m pytest -q -p no:cacheprovider bench/bench_kernels.py bench/bench_rowwise.py \
  bench/bench_linear_epilogue.py bench/bench_attention.py bench/bench_ops.py --benchmark-only \
  --benchmark-json="$OUT_DIR/bench_kernels.json" --benchmark-columns=median,ops --benchmark-sort=name \
  > "$OUT_DIR/bench_kernels.txt" 2>&1
tail -8 "$OUT_DIR/bench_kernels.txt"
# End to end: a generated JPEG/PNG corpus on disk -> masks and dataset on disk, beside the core's
# pairs/s of the same process (ratio_to_core), and each decoder's images/s.
phase "benchmarks (e2e)" 50 python -m pytest -q -p no:cacheprovider bench/bench_e2e.py --benchmark-only \
  --benchmark-json="$OUT_DIR/bench_e2e.json" --benchmark-columns=median,ops --benchmark-sort=name \
  > "$OUT_DIR/bench_e2e.txt" 2>&1
tail -6 "$OUT_DIR/bench_e2e.txt"
mapfile -t JSONS < <(ls "$OUT_DIR"/bench_core.json "$OUT_DIR"/bench_kernels.json "$OUT_DIR"/bench_e2e.json 2>/dev/null)

phase profile 15 python bench/profile_core.py --rows 15 > "$OUT_DIR/profile.txt" 2>&1
head -12 "$OUT_DIR/profile.txt"

grep "kernels compiled" "$OUT_DIR/compile_check.txt"
[ "${#JSONS[@]}" -gt 0 ] && python bench/summarize.py --card "$CARD" --write "$RUN_JSON" "${JSONS[@]}" \
  | tee "$OUT_DIR/table.txt" && echo "run JSON: $RUN_JSON"
