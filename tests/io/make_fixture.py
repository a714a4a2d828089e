#!/usr/bin/env python3
"""Regenerate tests/io/fixtures/from_python.safetensors (numpy only, deterministic).

test_safetensors.cpp checks these exact names, dtypes, shapes, values and metadata, so
change both together.  Run: python3 tests/io/make_fixture.py [OUT]"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
import safetensors_torch  # noqa: E402


def fixture_arrays():
    return {
        "vgg_block_1.0.weight": (np.arange(2 * 1 * 3 * 3, dtype=np.float32) * 0.5 - 4.0).reshape(2, 1, 3, 3),
        "vgg_block_1.0.bias": np.array([0.25, -1.5], dtype=np.float32),
        "fc.1.weight": np.array([[1e-3, -2e30], [3.5, np.float32(1) / 3]], dtype=np.float32),
        "optimizer.step": np.array(42, dtype=np.int64),  # shape [] scalar
        "double_values": np.array([np.pi, -np.e, 1e-300], dtype=np.float64),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


FIXTURE_METADATA = {"format": "pt", "producer": "tools/safetensors_torch.py", "unicode": "Größe ✓"}

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "fixtures", "from_python.safetensors")
    safetensors_torch.save_numpy(fixture_arrays(), out, metadata=FIXTURE_METADATA)
    print(out, os.path.getsize(out), "bytes")
