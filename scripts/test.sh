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
  # VGG_MPI=OFF, VGG_CUDA=OFF: the MPI tests (label distributed) and the CUDA tests ran in the first
  # stage; these stages rebuild the unit tests only.
  cmake -S . -B "$dir" "$@" -DVGG_BUILD_BENCHMARKS=OFF -DVGG_BUILD_EXAMPLES=OFF -DVGG_BUILD_TOOLS=OFF -DVGG_MPI=OFF \
    -DVGG_CUDA=OFF
  cmake --build "$dir" -j "$(nproc)"
  ctest --test-dir "$dir" --output-on-failure -j "$(nproc)" -L unit
}

# Under AddressSanitizer + UndefinedBehaviorSanitizer (bad input must never read out of bounds).
# VGG_SANITIZE=0 skips this stage.
if [ "${VGG_SANITIZE:-1}" != 0 ]; then
  # -g1 (line tables): sanitizer reports keep file:line, and the build takes about a third less time
  # than with full debug information. -O1 (ASan's own advice): compiling is the largest share of this
  # stage, and it took 9.7 CPU-minutes instead of 14.9 at -O2 (Intel family 6 model 207) while the
  # tests took 2.7 instead of 2.0; test_winograd, which ran three times longer at -O1, keeps -O2
  # (tests/core/CMakeLists.txt).
  unit_tests_in "${build}-sanitize" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
    -DVGG_SANITIZE=ON
fi

# With only the plain kernels (Eigen GEMM, no AVX-512 code), the path every non-AVX-512 machine
# takes. VGG_KERNEL_TESTS_ONLY: the tests of code that never reaches a kernel (data, safetensors,
# the command line's parser, the fuzz replays) compile to the same code here as in the first stage,
# so they are left out (about 70 CPU-seconds of compiling; AMD EPYC family 25 model 17).
# VGG_PLAIN=0 skips this stage.
if [ "${VGG_PLAIN:-1}" != 0 ]; then
  unit_tests_in "${build}-plain" -DCMAKE_BUILD_TYPE=Release -DVGG_PLAIN_KERNELS=ON -DVGG_KERNEL_TESTS_ONLY=ON
fi

# The libFuzzer targets (tests/fuzz/fuzz_*.cpp) built with clang-14 under ASan + UBSan, each run for
# VGG_FUZZ_SECONDS (default 20) over a copy of its corpus (tests/fuzz/run.sh). 20 s, not 30: every run
# starts again from the committed seeds, and in 30 s runs (Intel family 6 model 207, two at a time)
# each target had 98.7-100% of its final edge coverage by 20 s (fuzz_idx and fuzz_image had all but
# stopped by 10 s); five targets on two cores are three rounds, so this is 30 s less CI. Long fuzzing
# is a local run (tests/fuzz/README.md). VGG_FUZZ=0 skips this stage; without a clang++-14 that links
# -fsanitize=fuzzer (scripts/setup.sh installs clang-14 and libclang-rt-14-dev) it is skipped with a
# message.
if [ "${VGG_FUZZ:-1}" != 0 ]; then
  probe=$(mktemp -d)
  echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' > "$probe/probe.cpp"
  have_libfuzzer=0
  if command -v clang++-14 >/dev/null 2>&1 && clang++-14 -fsanitize=fuzzer "$probe/probe.cpp" -o "$probe/probe" 2>/dev/null; then
    have_libfuzzer=1
  fi
  rm -rf "$probe"
  if [ "$have_libfuzzer" = 1 ]; then
    CC=clang-14 CXX=clang++-14 cmake -S . -B "${build}-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DVGG_FUZZ=ON \
      -DVGG_BUILD_BENCHMARKS=OFF -DVGG_BUILD_EXAMPLES=OFF -DVGG_BUILD_TOOLS=OFF
    cmake --build "${build}-fuzz" -j "$(nproc)" --target vgg_fuzzers
    bash tests/fuzz/run.sh "${build}-fuzz" "${VGG_FUZZ_SECONDS:-20}"
  else
    echo "test.sh: fuzz stage SKIPPED: no clang++-14 with libFuzzer (run scripts/setup.sh: clang-14, libclang-rt-14-dev)"
  fi
fi
