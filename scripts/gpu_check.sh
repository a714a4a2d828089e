#!/usr/bin/env bash
# The CUDA backend on a machine with an NVIDIA GPU: builds with -DVGG_CUDA=ON, runs the CUDA tests
# (which must run, not skip: CPU parity, staged batches uploading while the compute runs, cuDNN
# algorithms timed once per shape, no cudaMalloc / cudaMallocHost in a steady epoch, out-of-memory
# messages, vgg-train --device), the GPU benchmark (VGG-11 forward and backward, full width and
# width/8, batch 64 and 8; a whole training step with batches given directly and staged one step
# ahead) and, when vgg-train was built with --device, one epoch of the recipe on the GPU; then
# prints a summary. Logs go to $build/gpu_check/.
# Also data-parallel training over NCCL (its own section below).
#
#   bash scripts/gpu_check.sh                 # everything
#   VGG_GPU_BUILD_ONLY=1 bash scripts/gpu_check.sh   # the build alone (works without a GPU)
#   VGG_GPU_EPOCH_LIMIT=6000 bash scripts/gpu_check.sh   # the epoch on the first 6000 images only
set -euo pipefail
cd "$(dirname "$0")/.."
build=${VGG_BUILD_DIR:-build-gpu}
jobs=${JOBS:-$(nproc)}
logs="$build/gpu_check"

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DVGG_CUDA=ON -DVGG_BUILD_EXAMPLES=OFF
# Only the targets this check runs (when Google Benchmark or vgg::io is missing, theirs are absent).
targets=(test_cuda_ops test_cuda_device)
available=$(cmake --build "$build" --target help)
for t in bench_cuda vgg-train test_nccl; do
  if grep -q "\b$t\b" <<<"$available"; then targets+=("$t"); fi
done
start=$(date +%s)
cmake --build "$build" -j "$jobs" --target "${targets[@]}"
build_seconds=$(( $(date +%s) - start ))
echo "gpu_check: built ${targets[*]} in ${build_seconds}s"
if [ "${VGG_GPU_BUILD_ONLY:-0}" = 1 ]; then exit 0; fi

mkdir -p "$logs"
summary=()
status=0
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$logs/gpu.txt"
  summary+=("device: $(head -1 "$logs/gpu.txt")")
fi

# The tests: the device suite must run here, so a skip is a failure of this check.
if ctest --test-dir "$build" -L cuda --output-on-failure >"$logs/tests.log" 2>&1; then
  if grep -q "VGG_SKIPPED" "$logs/tests.log"; then
    summary+=("tests: SKIPPED on this machine (no usable device): $(grep -m1 VGG_SKIPPED "$logs/tests.log")")
    status=1
  else
    summary+=("tests: $(grep -E 'tests passed' "$logs/tests.log")")
  fi
else
  summary+=("tests: FAILED (see $logs/tests.log)")
  status=1
fi
tail -5 "$logs/tests.log"

if [ -x "$build/benchmarks/bench_cuda" ]; then
  if "$build/benchmarks/bench_cuda" --benchmark_counters_tabular=true --benchmark_min_time=0.5 \
       2>&1 | tee "$logs/bench_cuda.txt"; then
    summary+=("benchmark: $logs/bench_cuda.txt")
    # The staging's effect: a whole step with each batch given directly (args 64/0) or staged (64/1).
    while read -r line; do summary+=("  $line"); done < <(grep -E '^BM_train_step' "$logs/bench_cuda.txt" || true)
  else
    summary+=("benchmark: FAILED (see $logs/bench_cuda.txt)")
    status=1
  fi
else
  summary+=("benchmark: not built (Google Benchmark missing)")
fi

train="$build/tools/vgg-train"
if [ -x "$train" ] && "$train" --help | grep -q -- "--device"; then
  if [ -f data/fashion-mnist/train-images-idx3-ubyte ] || [ -f data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    limit=()
    if [ -n "${VGG_GPU_EPOCH_LIMIT:-}" ]; then limit=(--limit "$VGG_GPU_EPOCH_LIMIT"); fi
    if "$train" --device cuda --epochs 1 "${limit[@]}" --save "$logs/epoch.safetensors" 2>&1 | tee "$logs/epoch.txt"; then
      summary+=("epoch: $(grep -E '^epoch 1' "$logs/epoch.txt" | tail -1)")
    else
      summary+=("epoch: FAILED (see $logs/epoch.txt)")
      status=1
    fi
  else
    summary+=("epoch: skipped (no data/fashion-mnist; bash scripts/fetch_data.sh where the network allows)")
  fi
else
  summary+=("epoch: skipped (vgg-train has no --device in this build)")
fi

# ---- data-parallel training over NCCL (tests/distributed/test_nccl.cu, label nccl) ----
# The one-rank device run must pass here (a skip fails the check); the two-rank run needs two GPUs
# and may skip on a one-GPU machine.
if [ -x "$build/tests/distributed/test_nccl" ]; then
  ctest --test-dir "$build" -L nccl -V >"$logs/nccl.log" 2>&1 || true
  tail -8 "$logs/nccl.log"
  for t in host np1 np2; do
    line=$(grep -E "Test +#[0-9]+: distributed\.nccl\.$t " "$logs/nccl.log" | tail -1)
    number=$(sed -E 's/.*Test +#([0-9]+):.*/\1/' <<<"$line")
    reason=$(grep -m1 -o "^$number: VGG_SKIPPED: .*" "$logs/nccl.log" | cut -d' ' -f2- || true)
    if grep -q "Passed" <<<"$line"; then
      summary+=("nccl $t: passed")
    elif [ "$t" = np2 ] && grep -q "Skipped" <<<"$line"; then
      summary+=("nccl $t: skipped ($reason)")
    else
      summary+=("nccl $t: FAILED${reason:+ (skipped: $reason)} (see $logs/nccl.log)")
      status=1
    fi
  done
else
  summary+=("nccl: not built (needs MPI and NCCL: vgg::distributed_cuda)")
fi

echo
echo "==== gpu_check summary ===="
echo "build: ${build_seconds}s for ${targets[*]}"
printf '%s\n' "${summary[@]}"
exit $status
