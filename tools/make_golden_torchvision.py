#!/usr/bin/python3
"""Write tests/golden/torchvision_*_w32*.safetensors: torchvision's VGG at 1/32 width, for CI.

    /usr/bin/python3 tools/make_golden_torchvision.py            # (re)write the files
    /usr/bin/python3 tools/make_golden_torchvision.py --check    # regenerate in a temp dir, compare bytes

CI never runs this (it needs torch and torchvision); the output is committed and read by
tests/core/test_torchvision.cpp, which needs no torch. Float32 on the CPU, one thread,
deterministic algorithms, oneDNN off, so two runs write byte-identical files.

Models: torchvision.models.vgg.VGG built from torchvision's own make_layers with the vgg11_bn
(configuration "A", batch norm) and vgg16 ("D") layer lists at 1/32 width (2, 4, 8, 16, 16
channels), and a classifier of torchvision's structure at 1/32 width (Linear(16*7*7, 128), ReLU,
Dropout, Linear(128, 128), ReLU, Dropout, Linear(128, 10)): the names (features.0.weight,
features.1.running_mean, avgpool, classifier.6.bias) and module tree of
vgg::torchvision::vgg11_bn<10, 32, Input<3, 96, 64>> and vgg16<10, 32, Input<3, 96, 64>>. The
96 x 64 input leaves 3 x 2 features, which AdaptiveAvgPool2d((7, 7)) spreads over overlapping
bins: the pool is not the identity here, unlike at 224 x 224.

Order: torch.manual_seed(5); for each net, the model (torchvision's initialisation of the convs,
torch's default of the replaced classifier), then every conv bias drawn from U(-0.1, 0.1) and the
batch norms' weight U(0.5, 1.5), bias U(-0.2, 0.2), running_mean U(-0.5, 0.5), running_var
U(0.5, 2), num_batches_tracked 7 (torchvision's zeros and ones would hide a swapped name); then
x = torch.randn(2, 3, 96, 64).

Files:
  torchvision_vgg11_bn_w32.safetensors, torchvision_vgg16_w32.safetensors
      the state dicts as tools/torch_to_safetensors.py writes them (its own function)
  torchvision_w32_io.safetensors
      input [2, 3, 96, 64]; vgg11_bn.logits, vgg16.logits [2, 10]: eval mode
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

try:
    import torch
    import torchvision
    from torch import nn
    from torchvision.models import vgg as tvvgg
except ImportError:
    sys.exit("make_golden_torchvision.py: torch and torchvision are not importable by " + sys.executable +
             "; run it with Debian's PyTorch: /usr/bin/python3 tools/make_golden_torchvision.py")

import safetensors_torch as st  # noqa: E402
import torch_to_safetensors as tts  # noqa: E402

FORMAT = "vgg-golden-torchvision-1"
COMMAND = "/usr/bin/python3 tools/make_golden_torchvision.py"
DIVISOR, CLASSES, BATCH, SEED = 32, 10, 2, 5
INPUT = (3, 96, 64)
NETS = [("vgg11_bn", "A", True), ("vgg16", "D", False)]


def build(cfg_name: str, batch_norm: bool) -> nn.Module:
    cfg = [v if v == "M" else v // DIVISOR for v in tvvgg.cfgs[cfg_name]]
    model = tvvgg.VGG(tvvgg.make_layers(cfg, batch_norm=batch_norm), num_classes=CLASSES)
    channels, hidden = 512 // DIVISOR, 4096 // DIVISOR
    model.classifier = nn.Sequential(nn.Linear(channels * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=0.5),
                                     nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=0.5),
                                     nn.Linear(hidden, CLASSES))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def generate(out_dir: str):
    torch.manual_seed(SEED)
    models = {name: build(cfg, bn) for name, cfg, bn in NETS}
    x = torch.randn(BATCH, *INPUT)
    io = {"input": x}
    paths = []
    for name, model in models.items():
        with torch.no_grad():
            io[f"{name}.logits"] = model(x)
        path = os.path.join(out_dir, f"torchvision_{name}_w{DIVISOR}.safetensors")
        tts.to_safetensors(model.state_dict(), path, path)
        paths.append(path)
    metadata = {
        "format": FORMAT, "command": COMMAND, "seed": str(SEED), "batch_size": str(BATCH),
        "input": "x".join(map(str, INPUT)), "width_divisor": str(DIVISOR), "classes": str(CLASSES),
        "mode": "eval", "torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
    }
    path = os.path.join(out_dir, f"torchvision_w{DIVISOR}_io.safetensors")
    st.save_file(io, path, metadata=metadata)
    paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "golden"), help="output directory")
    parser.add_argument("--check", action="store_true",
                        help="write to a temporary directory and compare byte-for-byte with --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            paths = generate(tmp)
            same = all(filecmp.cmp(p, os.path.join(args.out, os.path.basename(p)), shallow=False) for p in paths)
        print(f"make_golden_torchvision.py: {args.out} is {'up to date (byte-identical)' if same else 'out of date'}")
        return 0 if same else 1
    os.makedirs(args.out, exist_ok=True)
    for path in generate(args.out):
        print(f"  wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
