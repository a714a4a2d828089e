#!/usr/bin/env bash
# The README's test command: set up, build everything in Release, run the whole CTest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${VGG_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
