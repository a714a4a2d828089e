#!/usr/bin/env bash
# The README's test command: set up, build everything in Release, run the whole CTest suite.
# The main build takes the CUDA backend where the toolkit and cuDNN are found (VGG_CUDA=AUTO), so
# nvcc compiles every CUDA source even without a GPU (the device tests then report themselves
# skipped); the two unit-test builds below are CPU-only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${VGG_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DVGG_CUDA=AUTO
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"

# The unit tests again in a build of their own: `unit_tests_in <dir> <cmake options...>`.
unit_tests_in() {
  local dir="$1"
  shift
  cmake -S . -B "$dir" "$@" -DVGG_BUILD_BENCHMARKS=OFF -DVGG_BUILD_EXAMPLES=OFF -DVGG_BUILD_TOOLS=OFF -DVGG_CUDA=OFF
  cmake --build "$dir" -j "$(nproc)"
  ctest --test-dir "$dir" --output-on-failure -j "$(nproc)" -L unit
}

# Under AddressSanitizer + UndefinedBehaviorSanitizer (bad input must never read out of bounds).
# VGG_SANITIZE=0 skips this stage.
if [ "${VGG_SANITIZE:-1}" != 0 ]; then
  unit_tests_in "${build}-sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVGG_SANITIZE=ON
fi

# With only the plain kernels (Eigen GEMM, no AVX-512 code), the path every non-AVX-512 machine
# takes. VGG_PLAIN=0 skips this stage.
if [ "${VGG_PLAIN:-1}" != 0 ]; then
  unit_tests_in "${build}-plain" -DCMAKE_BUILD_TYPE=Release -DVGG_PLAIN_KERNELS=ON
fi
