#!/usr/bin/env python3
"""Checks for tools/safetensors_torch.py (plain asserts, no pytest needed).

Usage: test_safetensors_torch.py [FROM_CPP]   FROM_CPP: a file written by test_safetensors
(C++ -> Python direction).  The torch checks run only when torch imports."""

import os
import struct
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
sys.path.insert(0, HERE)
import make_fixture  # noqa: E402
import safetensors_torch as st  # noqa: E402

try:
    import torch
except ImportError:
    torch = None


def expect_error(path, *fragments):
    try:
        st.load_numpy(path)
    except st.SafetensorsError as error:
        for fragment in fragments:
            assert fragment in str(error), (fragment, str(error))
        return
    raise AssertionError(f"{path}: no SafetensorsError")


def write(path, header, data=b""):
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header)) + header + data)
    return path


def check_from_cpp(path):
    arrays = st.load_numpy(path)
    assert list(arrays) == ["vgg_block_1.0.weight", "vgg_block_1.0.bias", "optimizer.step", "double_values"]
    assert arrays["vgg_block_1.0.weight"].dtype == np.float32
    np.testing.assert_array_equal(arrays["vgg_block_1.0.weight"],
                                  (np.arange(18, dtype=np.float32) * 0.5 - 4.0).reshape(2, 1, 3, 3))
    assert arrays["optimizer.step"].shape == () and arrays["optimizer.step"] == 42
    np.testing.assert_array_equal(arrays["double_values"], [np.pi, -np.e, 1e-300])
    assert st.read_metadata(path) == {"producer": "vgg C++"}
    if torch is not None:
        tensors = st.load_file(path)
        assert tensors["optimizer.step"].dtype == torch.int64
        assert torch.equal(tensors["vgg_block_1.0.bias"], torch.tensor([0.25, -1.5]))


def main():
    tmp = tempfile.mkdtemp(prefix="vgg_st_py_")

    # The committed fixture is exactly what the generator makes (so it can be regenerated).
    regenerated = os.path.join(tmp, "fixture.safetensors")
    st.save_numpy(make_fixture.fixture_arrays(), regenerated, metadata=make_fixture.FIXTURE_METADATA)
    with open(regenerated, "rb") as a, open(os.path.join(HERE, "fixtures", "from_python.safetensors"), "rb") as b:
        assert a.read() == b.read(), "fixture out of date: run tests/io/make_fixture.py"

    # Bytes as the format description and the reference writer produce them.
    p = os.path.join(tmp, "ref.safetensors")
    st.save_numpy({"attn.0": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}, p)
    header = b'{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}'
    header += b" " * (-len(header) % 8)
    with open(p, "rb") as f:
        assert f.read() == struct.pack("<Q", len(header)) + header + np.arange(6, dtype="<f4").tobytes()
    st.save_numpy({}, p)
    with open(p, "rb") as f:
        assert f.read() == struct.pack("<Q", 8) + b"{}      "

    # numpy round trip over every numpy-representable dtype, scalar and zero-size.
    arrays = {
        "f32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "f64": np.array([1e300, -0.0]),
        "f16": np.array([1.5, 2.0], dtype=np.float16),
        "i64": np.array(-(2 ** 62), dtype=np.int64),
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False]),
        "zero": np.zeros((2, 0), dtype=np.float32),
        "big_endian": np.array([1.0, 2.0], dtype=">f4"),
    }
    st.save_numpy(arrays, p, metadata={"k": "v"})
    back = st.load_numpy(p)
    assert st.read_metadata(p) == {"k": "v"}
    for name, array in arrays.items():
        assert back[name].shape == array.shape and back[name].dtype.kind == array.dtype.kind, name
        np.testing.assert_array_equal(back[name], array)
    assert list(back)[:2] == ["i64", "f64"]  # official order: I64 ranks above F64

    # Malformed files.
    expect_error(write(os.path.join(tmp, "t"), b""), "header is not valid JSON")
    with open(os.path.join(tmp, "short"), "wb") as f:
        f.write(b"\x01\x02")
    expect_error(os.path.join(tmp, "short"), "truncated")
    expect_error(write(os.path.join(tmp, "dup"), b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                                  b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"xy"),
                 "duplicate key", "'a'")
    expect_error(write(os.path.join(tmp, "hole"), b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"xy"),
                 "'a'", "expected begin 0")
    expect_error(write(os.path.join(tmp, "size"), b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"abcd"),
                 "'a'", "needs 8 bytes")
    expect_error(write(os.path.join(tmp, "dtype"), b'{"a":{"dtype":"F128","shape":[],"data_offsets":[0,16]}}',
                       b"\0" * 16), "unknown dtype")
    expect_error(write(os.path.join(tmp, "meta"), b'{"__metadata__":{"epoch":3}}'), "__metadata__")

    # D2L naming: 2 blocks (1 and 2 convs) then Flatten and the three-Linear head.
    d2l_keys = ["0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias", "1.2.weight", "1.2.bias",
                "3.weight", "3.bias", "6.weight", "6.bias", "9.weight", "9.bias"]
    ours = st.rename_d2l_sequential({k: k for k in d2l_keys})
    assert list(ours) == ["vgg_block_1.0.weight", "vgg_block_1.0.bias", "vgg_block_2.0.weight", "vgg_block_2.0.bias",
                          "vgg_block_2.2.weight", "vgg_block_2.2.bias", "fc.1.weight", "fc.1.bias", "fc.4.weight",
                          "fc.4.bias", "fc.7.weight", "fc.7.bias"], list(ours)
    assert st.rename_to_d2l_sequential(ours) == {k: k for k in d2l_keys}
    assert list(st.rename_d2l_sequential({"net." + k: 0 for k in d2l_keys})) == list(ours)
    try:
        st.rename_d2l_sequential({"0.0.weight": 0, "features.0.weight": 0})
        raise AssertionError("unknown key accepted")
    except st.SafetensorsError:
        pass

    if len(sys.argv) > 1:
        check_from_cpp(sys.argv[1])

    if torch is None:
        print("torch not importable: numpy checks only")
        return
    # The chapter's architecture, built eagerly (small), through save_file/load_file.
    from torch import nn

    def vgg_block(num_convs, in_channels, out_channels):
        layers = []
        for _ in range(num_convs):
            layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
            in_channels = out_channels
        return nn.Sequential(*layers, nn.MaxPool2d(kernel_size=2, stride=2))

    net = nn.Sequential(vgg_block(1, 1, 4), vgg_block(2, 4, 8), nn.Flatten(),
                        nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    state = net.state_dict()
    renamed = st.rename_d2l_sequential(state)
    assert sorted(renamed) == sorted(ours)
    assert tuple(renamed["fc.7.weight"].shape) == (10, 16)
    st.save_file(renamed, p, metadata={"format": "pt"})
    loaded = st.load_file(p)
    net2 = nn.Sequential(vgg_block(1, 1, 4), vgg_block(2, 4, 8), nn.Flatten(),
                         nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    net2.load_state_dict(st.rename_to_d2l_sequential(loaded))
    x = torch.randn(2, 1, 8, 8)
    net.eval(), net2.eval()
    assert torch.equal(net(x), net2(x))
    # Other torch dtypes, including bfloat16 (numpy has none) and a non-contiguous view.
    extra = {"bf16": torch.tensor([1.5, -2.0], dtype=torch.bfloat16), "i64": torch.tensor(7),
             "t": torch.arange(6.0).reshape(2, 3).t(), "zero": torch.zeros(0, 4)}
    st.save_file(extra, p)
    back = st.load_file(p)
    for name, tensor in extra.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    print("numpy and torch", torch.__version__, "checks passed")


if __name__ == "__main__":
    main()
