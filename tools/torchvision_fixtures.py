#!/usr/bin/env python3
"""Write tests/core/fixtures/torchvision_<net>.print and .keys from torchvision itself:
print(torchvision.models.<net>()) and its state_dict keys in order. test_torchvision.cpp compares
vgg::print_modules and the checkpoint tensor names of vgg::torchvision::<net> against them.
Needs torch and torchvision (not CI). Run: python3 tools/torchvision_fixtures.py [OUT_DIR]"""

import os
import sys

import torchvision

NETS = ["vgg11", "vgg11_bn", "vgg16"]


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "tests", "core", "fixtures")
    os.makedirs(out, exist_ok=True)
    for name in NETS:
        net = getattr(torchvision.models, name)()
        write_atomic(os.path.join(out, f"torchvision_{name}.print"), str(net) + "\n")
        write_atomic(os.path.join(out, f"torchvision_{name}.keys"), "".join(k + "\n" for k in net.state_dict()))
    print("wrote", ", ".join(NETS), "to", out)


if __name__ == "__main__":
    main()
