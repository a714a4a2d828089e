#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_checkpoint: small safetensors checkpoints of the fuzzer's
stand-in network (tests/fuzz/fuzz_checkpoint.cpp), valid and slightly damaged.
Usage: tests/fuzz/make_checkpoint_seeds.py tests/fuzz/corpus/fuzz_checkpoint"""
import json
import math
import struct
import sys
from pathlib import Path

ARCH = "Input<1,4,4> VggBlock<1,1,2> Classifier<3>"
PARAMS = [("vgg_block_1.0.weight", [2, 1, 3, 3]), ("vgg_block_1.0.bias", [2]),
          ("fc.1.weight", [3, 8]), ("fc.1.bias", [3])]


def size(shape):
    return math.prod(shape)


def write(path, tensors, metadata):
    """tensors: list of (name, dtype, shape, values)."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, values in tensors:
        raw = struct.pack("<%d%s" % (len(values), "f" if dtype == "F32" else "q"), *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def weights(scale=0.01):
    return [(n, "F32", s, [scale * i for i in range(size(s))]) for n, s in PARAMS]


def training(optimizer, epoch=1, step=4, weight_value=None):
    tensors = weights()
    if weight_value is not None:
        tensors[3][3][0] = weight_value
    states = ["exp_avg", "exp_avg_sq"] if optimizer == "adam" else ["momentum_buffer"]
    for state in states:
        tensors += [("optimizer.%s.%s" % (state, n), "F32", s, [0.001] * size(s)) for n, s in PARAMS]
    tensors += [("train.epoch", "I64", [], [epoch]), ("train.network_step", "I64", [], [step]),
                ("optimizer.step", "I64", [], [step]), ("train.network_seed", "I64", [], [1])]
    return tensors


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"vgg.architecture": ARCH, "vgg.format": "training-1", "seed": "1", "lr": "0.00100000005"}
    write(out / "adam", training("adam"), {**meta, "vgg.optimizer": "adam"})
    write(out / "sgd", training("sgd"), {**meta, "vgg.optimizer": "sgd"})
    write(out / "weights", weights(), {"vgg.architecture": ARCH, "vgg.format": "weights-1"})
    write(out / "bare_weights", weights(), {})
    write(out / "epoch_2_31", training("adam", epoch=2**31), {**meta, "vgg.optimizer": "adam"})
    write(out / "nan_weight", training("adam", weight_value=float("nan")), {**meta, "vgg.optimizer": "adam"})
    write(out / "other_arch", weights(), {"vgg.architecture": "Input<1,8,8>", "vgg.format": "weights-1"})


if __name__ == "__main__":
    main(sys.argv[1])
