#!/usr/bin/env python3
"""Read and write safetensors files without the ``safetensors`` package.

Debian ships no ``safetensors`` package, so this module implements the format itself
(written from the format description, https://github.com/huggingface/safetensors):

    [8 bytes: little-endian uint64 N][N bytes: UTF-8 JSON header][raw little-endian data]

Files it writes are what the official writer produces for the same tensors: compact JSON,
"__metadata__" first, tensors ordered by descending dtype alignment then by name, header
padded with spaces to a multiple of 8.  Files it reads are validated as strictly as the C++
reader in include/vgg/io/safetensors.hpp.

API
---
``save_file(state_dict, path, metadata=None)`` / ``load_file(path) -> dict[str, torch.Tensor]``
    PyTorch tensors (needs ``torch``).
``save_numpy(arrays, path, metadata=None)`` / ``load_numpy(path) -> dict[str, numpy.ndarray]``
    The same with numpy only (no torch needed).
``read_metadata(path) -> dict[str, str]``
``rename_d2l_sequential(state_dict)`` / ``rename_to_d2l_sequential(state_dict)``
    Map between the D2L chapter's ``nn.Sequential`` keys and vgg's tensor names.

Moving the D2L VGG from PyTorch to vgg
--------------------------------------
vgg looks tensors up by name, so names must follow our scheme::

    vgg_block_1.0.weight, vgg_block_1.0.bias,   # block 1 (1-based), conv at index 0
    vgg_block_1.2.weight, ...                   # next conv in the block (ReLUs in between)
    fc.1.weight, fc.1.bias,                     # head: Flatten=0, Linear=1, ReLU, Dropout,
    fc.4.weight, fc.4.bias,                     #       Linear=4, ReLU, Dropout,
    fc.7.weight, fc.7.bias                      #       Linear=7

The D2L chapter builds ``nn.Sequential(*conv_blks, nn.Flatten(), nn.LazyLinear(4096), ...)``
(inside ``self.net`` for the ``d2l.Classifier`` version), so ``net.state_dict()`` has keys
``{i}.{j}.weight`` for conv j of block i (0-based) and ``{k}.weight`` for head layer k.
``rename_d2l_sequential`` maps those (with or without the ``net.`` prefix) to ours::

    import torch, safetensors_torch as st
    model = VGG(arch=((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)))  # the chapter's
    ... train ...
    st.save_file(st.rename_d2l_sequential(model.net.state_dict()), "vgg11.safetensors",
                 metadata={"format": "pt"})

and back: ``model.net.load_state_dict(st.rename_to_d2l_sequential(st.load_file(path)))``.
Lazy layers must be materialised first (one forward pass) before ``load_state_dict``.

CLI
---
    safetensors_torch.py info FILE                      # metadata and tensor list
    safetensors_torch.py from-torch IN.pt OUT.safetensors [--d2l]   # torch.save'd state_dict
    safetensors_torch.py to-torch IN.safetensors OUT.pt [--d2l]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

if sys.byteorder != "little":
    raise ImportError("safetensors_torch: safetensors data is little-endian; this module only supports "
                      "little-endian hosts")

MAX_HEADER_BYTES = 100_000_000  # the official reader's limit

# Format dtype -> (bytes per element, numpy dtype or None when numpy has no such type).
# Listed in the official writer's order of increasing alignment, which save order depends on.
_DTYPES: Dict[str, Tuple[int, Optional[str]]] = {
    "BOOL": (1, "?"),
    "U8": (1, "<u1"),
    "I8": (1, "<i1"),
    "F8_E5M2": (1, None),
    "F8_E4M3": (1, None),
    "I16": (2, "<i2"),
    "U16": (2, "<u2"),
    "F16": (2, "<f2"),
    "BF16": (2, None),
    "I32": (4, "<i4"),
    "U32": (4, "<u4"),
    "F32": (4, "<f4"),
    "F64": (8, "<f8"),
    "I64": (8, "<i8"),
    "U64": (8, "<u8"),
}
_DTYPE_RANK = {name: rank for rank, name in enumerate(_DTYPES)}
_NUMPY_TO_FORMAT = {np.dtype(np_name): name for name, (_, np_name) in _DTYPES.items() if np_name}


class SafetensorsError(ValueError):
    """A malformed file or an unwritable tensor; the message names the file and tensor."""


# --------------------------------------------------------------------------- writing


def _serialize(entries: List[Tuple[str, str, List[int], bytes]], metadata: Optional[Mapping[str, str]]) -> bytes:
    """entries: (name, dtype, shape, data) -> the whole file as bytes, in official order."""
    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise SafetensorsError(f"metadata must map str to str, found {key!r}: {value!r}")
    # Descending alignment keeps every tensor aligned to its element size after the 8-aligned header.
    entries = sorted(entries, key=lambda e: (-_DTYPE_RANK[e[1]], e[0]))
    header: Dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    seen = set()
    for name, dtype, shape, data in entries:
        if name == "__metadata__" or name in seen:
            raise SafetensorsError(f"tensor {name!r}: reserved or duplicate name")
        seen.add(name)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return b"".join([struct.pack("<Q", len(text)), text] + [e[3] for e in entries])


def _write_atomically(path: str, blob: bytes) -> None:
    """Write to path + '.tmp', fsync, then rename, so a failure never destroys `path`."""
    temp = os.fspath(path) + ".tmp"
    try:
        with open(temp, "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def save_numpy(arrays: Mapping[str, np.ndarray], path: str, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Save numpy arrays (any numpy dtype listed in the format) to `path`, atomically."""
    entries = []
    for name, array in arrays.items():
        array = np.asarray(array)
        fmt = _NUMPY_TO_FORMAT.get(array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype)
        if fmt is None:
            raise SafetensorsError(f"tensor {name!r}: numpy dtype {array.dtype} has no safetensors equivalent")
        data = np.ascontiguousarray(array, dtype=np.dtype(_DTYPES[fmt][1])).tobytes()
        entries.append((name, fmt, [int(d) for d in array.shape], data))
    _write_atomically(path, _serialize(entries, metadata))


def _torch_format(torch: Any) -> Dict[Any, str]:
    return {
        torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
        torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.float64: "F64",
        torch.int64: "I64",
    }


def save_file(state_dict: Mapping[str, Any], path: str, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Save a PyTorch state_dict (name -> tensor) to `path`, atomically.

    Tensors are detached, moved to the CPU and made contiguous; shared storage is written twice
    (harmless for a state_dict, whose tensors do not alias)."""
    import torch

    to_format = _torch_format(torch)
    entries = []
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise SafetensorsError(f"tensor {name!r}: not a torch.Tensor but {type(tensor).__name__}")
        if tensor.dtype not in to_format:
            raise SafetensorsError(f"tensor {name!r}: torch dtype {tensor.dtype} has no safetensors equivalent")
        tensor = tensor.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: move the same 2 bytes as int16
            data = tensor.view(torch.int16).numpy().tobytes()
        else:
            data = tensor.numpy().tobytes()
        entries.append((name, to_format[tensor.dtype], list(tensor.shape), data))
    _write_atomically(path, _serialize(entries, metadata))


# --------------------------------------------------------------------------- reading


def _parse(path: str) -> Tuple[Dict[str, str], List[Tuple[str, str, List[int], int, int]], memoryview]:
    """-> (metadata, [(name, dtype, shape, begin, end)] in offset order, data buffer); validated."""
    with open(path, "rb") as f:
        blob = f.read()

    def fail(what: str) -> None:
        raise SafetensorsError(f"checkpoint {path!r}: {what}")

    if len(blob) < 8:
        fail(f"truncated: {len(blob)} bytes, but the 8-byte header length alone needs 8")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER_BYTES:
        fail(f"header length {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    if n > len(blob) - 8:
        fail(f"header length {n} bytes runs past the end of the file ({len(blob) - 8} bytes after the length field)")

    def no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            fail(f"duplicate key in the header: {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
        return dict(pairs)

    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        fail(f"header is not valid JSON: {error}")
    if not isinstance(header, dict):
        fail(f"header must be a JSON object, found {type(header).__name__}")
    buffer = memoryview(blob)[8 + n :]

    def is_count(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        fail("__metadata__ must be an object of strings")
    tensors = []
    for name, entry in header.items():
        where = f"tensor {name!r}: "
        if not isinstance(entry, dict):
            fail(where + "entry must be a JSON object")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in entry:
                fail(where + f'entry has no "{field}"')
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            fail(where + f"unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(is_count(d) for d in shape):
            fail(where + f"shape {shape!r} must be a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(o) for o in offsets):
            fail(where + f"data_offsets {offsets!r} must be [begin, end] of non-negative integers")
        begin, end = offsets
        if begin > end or end > len(buffer):
            fail(where + f"data_offsets [{begin},{end}] out of range of the {len(buffer)}-byte data buffer")
        count = 1
        for d in shape:
            count *= d
        if count * _DTYPES[dtype][0] != end - begin:
            fail(where + f"dtype {dtype} with shape {shape} needs {count * _DTYPES[dtype][0]} bytes, "
                 f"but data_offsets [{begin},{end}] span {end - begin}")
        tensors.append((name, dtype, shape, begin, end))
    tensors.sort(key=lambda t: (t[3], t[4], t[0]))
    covered, previous = 0, None
    for name, _, _, begin, end in tensors:
        if begin != covered:
            kind = "overlap" if begin < covered else "leave a hole after"
            fail(f"tensor {name!r}: data_offsets [{begin},{end}] {kind} {previous!r} (expected begin {covered})")
        covered, previous = end, name
    if covered != len(buffer):
        fail(f"data buffer has {len(buffer)} bytes but the tensors cover only {covered}")
    return metadata, tensors, buffer


def read_metadata(path: str) -> Dict[str, str]:
    """The "__metadata__" object of `path` ({} when absent)."""
    return _parse(path)[0]


def load_numpy(path: str) -> Dict[str, np.ndarray]:
    """Load every tensor of `path` as a numpy array (in offset order).  F8/BF16 raise."""
    _, tensors, buffer = _parse(path)
    out = {}
    for name, dtype, shape, begin, end in tensors:
        np_name = _DTYPES[dtype][1]
        if np_name is None:
            raise SafetensorsError(f"tensor {name!r}: numpy cannot represent dtype {dtype}; use load_file")
        out[name] = np.frombuffer(buffer[begin:end], dtype=np.dtype(np_name)).reshape(shape).copy()
    return out


def load_file(path: str) -> Dict[str, Any]:
    """Load every tensor of `path` as a CPU torch.Tensor (in offset order)."""
    import torch

    from_format = {v: k for k, v in _torch_format(torch).items()}
    _, tensors, buffer = _parse(path)
    out = {}
    for name, dtype, shape, begin, end in tensors:
        if dtype not in from_format:
            raise SafetensorsError(f"tensor {name!r}: this torch has no dtype for {dtype}")
        if dtype == "BF16":
            raw = np.frombuffer(buffer[begin:end], dtype="<i2").reshape(shape).copy()
            out[name] = torch.from_numpy(raw).view(torch.bfloat16)
        else:
            array = np.frombuffer(buffer[begin:end], dtype=np.dtype(_DTYPES[dtype][1])).reshape(shape).copy()
            out[name] = torch.from_numpy(array)
    return out


# --------------------------------------------------------------------------- D2L naming

_BLOCK_KEY = re.compile(r"^(\d+)\.(\d+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"^(\d+)\.(weight|bias)$")
_OUR_BLOCK_KEY = re.compile(r"^vgg_block_(\d+)\.(\d+)\.(weight|bias)$")
_OUR_HEAD_KEY = re.compile(r"^fc\.(\d+)\.(weight|bias)$")


def rename_d2l_sequential(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Map the D2L chapter's nn.Sequential keys to vgg's names (values are not copied).

    Block i (0-based) conv j: "{i}.{j}.weight" -> "vgg_block_{i+1}.{j}.weight".  Head layer k,
    counted after the B blocks: "{k}.weight" -> "fc.{k-B}.weight" (Flatten is fc.0, so the
    Linears become fc.1, fc.4, fc.7).  A leading "net." (d2l.Classifier) is dropped.
    Raises SafetensorsError on any key of another shape, so a mismatch is never silent."""
    stripped = {}
    for key, value in state_dict.items():
        stripped[key[4:] if key.startswith("net.") else key] = value
    blocks = [int(m.group(1)) for m in map(_BLOCK_KEY.match, stripped) if m]
    if not blocks:
        raise SafetensorsError("no '{block}.{layer}.weight' keys: not the D2L nn.Sequential VGG")
    num_blocks = max(blocks) + 1
    out = {}
    for key, value in stripped.items():
        if m := _BLOCK_KEY.match(key):
            out[f"vgg_block_{int(m.group(1)) + 1}.{m.group(2)}.{m.group(3)}"] = value
        elif (m := _HEAD_KEY.match(key)) and int(m.group(1)) > num_blocks:
            out[f"fc.{int(m.group(1)) - num_blocks}.{m.group(2)}"] = value
        else:
            raise SafetensorsError(f"key {key!r} is neither a VGG block nor a head layer of the D2L VGG")
    return out


def rename_to_d2l_sequential(state_dict: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Inverse of rename_d2l_sequential; `prefix="net."` for the d2l.Classifier version."""
    blocks = [int(m.group(1)) for m in map(_OUR_BLOCK_KEY.match, state_dict) if m]
    if not blocks:
        raise SafetensorsError("no 'vgg_block_{n}.{layer}.weight' keys: not a vgg checkpoint")
    num_blocks = max(blocks)
    out = {}
    for key, value in state_dict.items():
        if m := _OUR_BLOCK_KEY.match(key):
            out[f"{prefix}{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}"] = value
        elif m := _OUR_HEAD_KEY.match(key):
            out[f"{prefix}{int(m.group(1)) + num_blocks}.{m.group(2)}"] = value
        else:
            raise SafetensorsError(f"key {key!r} is not a vgg tensor name")
    return out


# --------------------------------------------------------------------------- CLI


def _main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print metadata and tensors")
    info.add_argument("file")
    for name, help_text in (("from-torch", "torch.save'd state_dict -> safetensors"),
                            ("to-torch", "safetensors -> torch.save'd state_dict")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("input")
        p.add_argument("output")
        p.add_argument("--d2l", action="store_true", help="rename between D2L nn.Sequential keys and vgg's")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            metadata, tensors, _ = _parse(args.file)
            for key, value in sorted(metadata.items()):
                print(f"__metadata__ {key} = {value}")
            for name, dtype, shape, begin, end in tensors:
                print(f"{name}\t{dtype}\t{shape}\t[{begin},{end}]")
        elif args.command == "from-torch":
            import torch

            state = torch.load(args.input, map_location="cpu")
            save_file(rename_d2l_sequential(state) if args.d2l else state, args.output, metadata={"format": "pt"})
        else:
            import torch

            state = load_file(args.input)
            torch.save(rename_to_d2l_sequential(state) if args.d2l else state, args.output)
    except SafetensorsError as error:
        print(f"safetensors_torch: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
