#!/usr/bin/env python3
"""Regenerate the tiny IDX fixtures under tests/data/fixtures/ (valid and deliberately broken).

Output is byte-for-byte deterministic (gzip mtime 0, no embedded name), so rerunning it leaves
git clean. Standard library only. Usage: tools/make_idx_fixtures.py [OUT_DIR]
"""

import gzip
import shutil
import struct
import sys
from pathlib import Path

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# Non-square on purpose, so a reader that swaps rows and cols fails the tests.
COUNT, ROWS, COLS = 5, 4, 3
LABELS = [3, 0, 9, 1, 7]


def pixel(image, row, col):
    return (image * 37 + row * 11 + col * 5 + 1) % 256


def images_bytes(count=COUNT, rows=ROWS, cols=COLS, magic=IMAGES_MAGIC):
    header = struct.pack(">IIII", magic, count, rows, cols)
    return header + bytes(pixel(i, r, c) for i in range(count) for r in range(rows) for c in range(cols))


def labels_bytes(labels=LABELS, magic=LABELS_MAGIC):
    return struct.pack(">II", magic, len(labels)) + bytes(labels)


def gzipped(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


def main():
    repo_root = Path(__file__).resolve().parent.parent
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else repo_root / "tests" / "data" / "fixtures"
    if out.exists():
        shutil.rmtree(out)

    files = {
        # Official names: train raw, t10k gzip, so load_dataset is tested on both.
        "valid/train-images-idx3-ubyte": images_bytes(),
        "valid/train-labels-idx1-ubyte": labels_bytes(),
        "valid/t10k-images-idx3-ubyte.gz": gzipped(images_bytes()),
        "valid/t10k-labels-idx1-ubyte.gz": gzipped(labels_bytes()),
        # gzip is detected by content: gzip data without .gz, raw data with .gz.
        "gzip-content-no-suffix.idx": gzipped(images_bytes()),
        "raw-content-gz-suffix.idx.gz": images_bytes(),
        # Header written little-endian: a typical hand-rolled-writer bug.
        "bad-magic.idx": struct.pack("<IIII", IMAGES_MAGIC, COUNT, ROWS, COLS) + images_bytes()[16:],
        "short.idx": images_bytes()[:-7],
        "short-header.idx": images_bytes()[:10],
        "trailing.idx": images_bytes() + b"\0\0\0",
        "short.idx.gz": gzipped(images_bytes())[:-12],  # cut inside the gzip trailer/stream
        "images-2d.idx": struct.pack(">III", 0x00000802, COUNT, ROWS * COLS) + images_bytes()[16:],
        "labels-out-of-range.idx": labels_bytes([3, 0, 10, 1, 7]),
        "labels-as-images.idx": labels_bytes(),
        # One label short of the images.
        "count-mismatch/train-images-idx3-ubyte": images_bytes(),
        "count-mismatch/train-labels-idx1-ubyte": labels_bytes(LABELS[:-1]),
        # Only the images: load_dataset must name the missing labels file.
        "missing-labels/train-images-idx3-ubyte": images_bytes(),
    }
    for name, data in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(files)} fixtures to {out}")


if __name__ == "__main__":
    main()
