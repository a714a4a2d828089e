#!/usr/bin/env bash
# Installs what vgg needs on Debian 12: compiler, CMake, Eigen, doctest, Google Benchmark,
# nlohmann-json, zlib, libpng and libjpeg-turbo (image decoding, vgg::image), Open MPI
# (data-parallel training, <vgg/distributed.hpp>), Node/npm plus Python 3 for the Fashion-MNIST
# fetcher, and clang-14 with its libFuzzer runtime and OpenMP library for the fuzz targets
# (tests/fuzz).
# Idempotent: installs only what is missing, so a machine that has everything needs no network.
set -euo pipefail
packages=(build-essential cmake libeigen3-dev doctest-dev libbenchmark-dev
          nlohmann-json3-dev zlib1g-dev libpng-dev libjpeg62-turbo-dev libopenmpi-dev openmpi-bin python3 npm
          clang-14 libclang-rt-14-dev libomp-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm may come from a non-Debian Node install; accept any working npm.
if command -v npm >/dev/null 2>&1; then
  filtered=(); for p in "${missing[@]}"; do [ "$p" = npm ] || filtered+=("$p"); done; missing=("${filtered[@]}")
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
