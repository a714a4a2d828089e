#!/usr/bin/env bash
# The README's main command: set up a fresh Debian 12 machine, build vgg-train, fetch
# Fashion-MNIST and train the chapter's recipe (width / 8 VGG-11, 224x224, batch 64, Adam 1e-3,
# 5 epochs). Extra arguments go to vgg-train, e.g. `scripts/run.sh --resize 64 --epochs 1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${VGG_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target vgg-train -j "$(nproc)"
bash scripts/fetch_data.sh data/fashion-mnist
exec "$build/tools/vgg-train" --data data/fashion-mnist "$@"
