#!/usr/bin/env python3
"""torchvision VGG weights (.pth state dict) <-> a safetensors file vgg loads, and back.

    /usr/bin/python3 tools/torch_to_safetensors.py vgg16-397923af.pth vgg16.safetensors
    /usr/bin/python3 tools/torch_to_safetensors.py --to-torch vgg16.safetensors vgg16.pth

The first form reads a torchvision VGG state dict (vgg11 ... vgg19_bn; torch.save(model.state_dict())
or a file of torchvision's model zoo), checks that every key is one of torchvision's VGG keys
(features.N.weight|bias|running_mean|running_var|num_batches_tracked, classifier.N.weight|bias),
converts floating tensors to float32 (vgg reads F32) and writes them under the same names, which
are the names of vgg::torchvision::<net> (include/vgg/presets.hpp): load it with
vgg::io::load_weights, or vgg::io::load_for_fine_tuning for another class count. It prints the C++
type that loads the file. The second form writes a torch.save'd state dict that
torchvision.models.<net>().load_state_dict accepts (a vgg training checkpoint's optimizer and
counter tensors are left out).

Needs torch only (numpy comes with it); the file format is tools/safetensors_torch.py's.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
from typing import Any, Dict, Mapping

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_torch as st  # noqa: E402  (the project's own safetensors bridge)

# torchvision's VGG state_dict keys. The name map between torchvision and vgg is the identity:
# vgg::torchvision::<net> names its modules as torchvision.models.VGG does.
_KEY = re.compile(r"^(features|classifier)\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_SUFFIX_ORDER = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Convolutions per net -> torchvision's name (configurations A, B, D, E of the VGG paper).
_NETS_BY_CONVS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}
# The prefix nn.DataParallel / DistributedDataParallel add to every key.
_WRAPPER_PREFIXES = ("module.",)


class ConversionError(ValueError):
    """A file that is not a torchvision VGG state dict; the message says what was found."""


def _key_order(name: str):
    m = _KEY.match(name)
    return (m.group(1) != "features", int(m.group(2)), _SUFFIX_ORDER.index(m.group(3))) if m else (2, 0, 0)


def unwrap_state_dict(obj: Any, path: str) -> Dict[str, Any]:
    """The state dict inside what torch.load returned: a state dict, a module, or a training
    checkpoint dict holding one under 'state_dict' or 'model'; a DataParallel 'module.' prefix is dropped."""
    import torch

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    out = {}
    for name, value in obj.items():
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = value
    return out


def describe(state: Mapping[str, Any], path: str) -> str:
    """Checks the keys and shapes of a torchvision VGG state dict; returns the C++ type that loads it,
    e.g. 'vgg::torchvision::vgg16_bn<1000>'. Raises ConversionError naming what does not fit."""
    import torch

    bad = [k for k in state if not _KEY.match(k)]
    if bad:
        shown = ", ".join(repr(k) for k in bad[:8]) + (f", ... ({len(bad) - 8} more)" if len(bad) > 8 else "")
        raise ConversionError(f"{path}: not a torchvision VGG state dict: unexpected keys {shown}; expected only "
                              "features.N.(weight|bias|running_mean|running_var|num_batches_tracked) and "
                              "classifier.N.(weight|bias)")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: {name!r} is a {type(value).__name__}, not a tensor")
    convs = sorted(int(_KEY.match(k).group(2)) for k, v in state.items()
                   if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4)
    batch_norm = any(k.endswith(".running_mean") for k in state)
    if len(convs) not in _NETS_BY_CONVS:
        raise ConversionError(f"{path}: {len(convs)} convolutions; torchvision's VGGs have 8, 10, 13 or 16")
    linears = [f"classifier.{i}" for i in (0, 3, 6)]
    for module in linears:
        if f"{module}.weight" not in state or f"{module}.bias" not in state:
            raise ConversionError(f"{path}: no {module}.weight / {module}.bias: not torchvision's VGG classifier "
                                  "(Linear at classifier.0, .3 and .6)")
    first = state["features.0.weight"]
    last_conv = state[f"features.{convs[-1]}.weight"]
    width = int(first.shape[0])
    if width < 1 or 64 % width:
        raise ConversionError(f"{path}: features.0.weight has {width} output channels; vgg's presets have 64 "
                              "divided by 1, 2, 4, 8, 16, 32 or 64")
    divisor = 64 // width
    hidden, in_features = (int(d) for d in state["classifier.0.weight"].shape)
    if in_features != int(last_conv.shape[0]) * 49:
        raise ConversionError(f"{path}: classifier.0.weight takes {in_features} inputs, expected "
                              f"{int(last_conv.shape[0])} x 7 x 7 = {int(last_conv.shape[0]) * 49} "
                              "(AdaptiveAvgPool2d((7, 7)) after the features)")
    if hidden != 4096 // divisor:
        raise ConversionError(f"{path}: classifier.0 has {hidden} outputs, expected {4096 // divisor} for a net "
                              f"whose first conv has {width} channels")
    classes = int(state["classifier.6.weight"].shape[0])
    net = _NETS_BY_CONVS[len(convs)] + ("_bn" if batch_norm else "")
    channels = int(first.shape[1])
    args = [str(classes)]
    if divisor != 1 or channels != 3:
        args.append(str(divisor))
    if channels != 3:
        args.append(f"vgg::Input<{channels}, 224, 224>")
    return f"vgg::torchvision::{net}<{', '.join(args)}>"


def to_safetensors(state: Mapping[str, Any], out: str, path: str = "state dict") -> str:
    """Writes a checked torchvision VGG state dict to `out` as vgg reads it; returns the C++ type."""
    import torch

    net = describe(state, path)
    converted = collections.OrderedDict()
    for name in sorted(state, key=_key_order):
        value = state[name].detach().cpu()
        if name.endswith("num_batches_tracked"):
            if value.dtype != torch.int64 or value.dim() != 0:
                raise ConversionError(f"{path}: {name} is {value.dtype} {list(value.shape)}, expected an int64 scalar")
        elif value.is_floating_point():
            value = value.to(torch.float32)  # vgg reads F32; half or double weights are converted
        else:
            raise ConversionError(f"{path}: {name} is {value.dtype}, expected a floating-point tensor")
        converted[name] = value.contiguous()
    st.save_file(converted, out, metadata={"format": "pt", "vgg.source": "torchvision", "vgg.torchvision_net": net})
    return net


def to_torch(path: str, out: str) -> str:
    """Writes the torchvision state dict held in the safetensors file `path` to `out` (torch.save)."""
    import torch

    state = st.load_file(path)
    # A vgg training checkpoint also holds optimizer state and counters: not part of a state dict.
    state = {k: v for k, v in state.items() if not k.startswith(("optimizer.", "train."))}
    net = describe(state, path)
    ordered = collections.OrderedDict((k, state[k]) for k in sorted(state, key=_key_order))
    tmp = out + ".tmp"
    torch.save(ordered, tmp)
    os.replace(tmp, out)
    return net


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", help="a .pth state dict (or, with --to-torch, a .safetensors file)")
    parser.add_argument("output", help="the .safetensors file to write (or, with --to-torch, the .pth)")
    parser.add_argument("--to-torch", action="store_true", help="safetensors -> torch.save'd state dict")
    args = parser.parse_args(argv)
    try:
        if args.to_torch:
            net = to_torch(args.input, args.output)
            print(f"wrote {args.output}: the state dict of torchvision.models.{net.split('::')[-1].split('<')[0]}")
        else:
            import torch

            obj = torch.load(args.input, map_location="cpu")
            net = to_safetensors(unwrap_state_dict(obj, args.input), args.output, args.input)
            print(f"wrote {args.output}: load it into {net} (vgg::io::load_weights)")
    except (ConversionError, st.SafetensorsError, OSError) as error:
        print(f"torch_to_safetensors: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
