#!/usr/bin/env python3
"""Full-size parity with torchvision: our logits against torchvision's for vgg11, vgg11_bn and vgg16
with random weights, eval mode, 3 x 224 x 224.

For each net: torchvision.models.<net>() with torchvision's own initialisation (batch norm's running
statistics and affine parameters drawn at random too, so that eval-mode batch norm is not the
identity), torch.save'd as a .pth, converted by tools/torch_to_safetensors.py, run by the C++
driver build/tools/torchvision-logits, compared. Everything it writes goes under a temporary
directory (a full-width vgg16 is 528 MB, twice) that is removed at the end.

Reported per net, as in tests/golden/README.md: max|ours - torch| / max|torch| over the logits,
the same for torch float32 itself against torch float64 (the scale of float32 rounding), and
whether the top-1 class agrees for every image. Needs torch and torchvision (/usr/bin/python3);
not run in CI.

Usage: /usr/bin/python3 tools/torchvision_parity.py [--driver build/tools/torchvision-logits]
       [--nets vgg11 vgg11_bn vgg16] [--batch 2] [--seed 0] [--threads 0]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_torch as st  # noqa: E402
import torch_to_safetensors as tts  # noqa: E402


def randomise_batch_norm(model: torch.nn.Module) -> None:
    """Running statistics and affine parameters away from their identity defaults."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.num_batches_tracked.fill_(7)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--driver", default=os.path.join(here, "..", "build", "tools", "torchvision-logits"))
    parser.add_argument("--nets", nargs="+", default=["vgg11", "vgg11_bn", "vgg16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="threads of both sides; 0: their defaults")
    args = parser.parse_args()
    if not os.access(args.driver, os.X_OK):
        print(f"torchvision_parity: no driver at {args.driver}; build it with "
              "cmake --build build --target torchvision-logits", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tmp = tempfile.mkdtemp(prefix="vgg_torchvision_parity_")
    rows = []
    try:
        for net in args.nets:
            torch.manual_seed(args.seed)
            model = getattr(torchvision.models, net)()
            randomise_batch_norm(model)
            model.eval()
            x = torch.randn(args.batch, 3, 224, 224)
            with torch.no_grad():
                ref = model(x)
                ref64 = model.double()(x.double())
                model.float()
            pth = os.path.join(tmp, f"{net}.pth")
            weights = os.path.join(tmp, f"{net}.safetensors")
            torch.save(model.state_dict(), pth)
            del model
            if tts.main([pth, weights]) != 0:
                return 1
            os.remove(pth)
            inp, out = os.path.join(tmp, "input.safetensors"), os.path.join(tmp, "logits.safetensors")
            st.save_file({"input": x}, inp)
            start = time.time()
            cmd = [args.driver, net, weights, inp, out] + ([str(args.threads)] if args.threads else [])
            subprocess.run(cmd, check=True)
            seconds = time.time() - start
            ours = st.load_file(out)["logits"]
            os.remove(weights)
            row = {
                "net": net,
                "ours_vs_torch": relative(ours, ref),
                "ours_vs_f64": relative(ours, ref64),
                "torch_vs_f64": relative(ref, ref64),
                "top1": bool((ours.argmax(1) == ref.argmax(1)).all()),
                "max_logit": float(ref.abs().max()),
                "seconds": seconds,
            }
            rows.append(row)
            print(f"{net}: max|ours-torch|/max|torch| {row['ours_vs_torch']:.2e}, ours vs float64 "
                  f"{row['ours_vs_f64']:.2e}, torch float32 vs float64 {row['torch_vs_f64']:.2e}, top-1 agrees "
                  f"{row['top1']}, max|logit| {row['max_logit']:.3g} ({seconds:.1f} s for the driver)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"\n{len(rows)} nets, batch {args.batch}, seed {args.seed}, torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, CPU {cpu}")
    print("| net | max rel. error vs torch | vs float64 | torch f32 vs float64 | top-1 agrees |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['net']} | {r['ours_vs_torch']:.1e} | {r['ours_vs_f64']:.1e} | {r['torch_vs_f64']:.1e} | "
              f"{'yes' if r['top1'] else 'no'} |")
    return 0 if all(r["top1"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
