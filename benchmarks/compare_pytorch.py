#!/usr/bin/env python3
"""Side-by-side speed of vgg and PyTorch on the same machine, alternating, with ratios.

Runs this library's benchmark (build/benchmarks/bench_train) and the same network in PyTorch
(Debian's python3-torch under /usr/bin/python3), in rounds that alternate the two so that drift of
a shared machine hits both, and prints the median and spread of each figure and their ratio:

  - width / 8 VGG-11, 1x224x224, batch 64: training step (forward, loss, backward, Adam)
  - the same net, eval forward
  - full-width VGG-11, batch 8: eval forward

PyTorch runs in three set-ups, and each ratio is against the fastest of them for that figure:
  - "best": tcmalloc preloaded (when libtcmalloc-minimal4 is installed) and channels_last, the set-up
    the performance issue names;
  - "mkldnn": tcmalloc and torch.utils.mkldnn.to_mkldnn (weights pre-packed in oneDNN's blocked
    layout, no reorder per call), eval only (it has no autograd). Measured here it beats "best" at
    eval by 1.7-2x, so comparing against "best" alone would flatter us;
  - "default": glibc malloc and NCHW, for reference.
With --bf16, a second table: vgg in bf16 mixed precision (bench_train's bf16/ rows, where the CPU has
AVX512-BF16) against PyTorch's bf16 autocast (torch.cpu.amp.autocast(dtype=torch.bfloat16), with
tcmalloc and channels_last: oneDNN then picks its AVX512-BF16 or AMX kernels by itself).
With --torchvision, instead: torchvision's full-width vgg16 and vgg16_bn (3x224x224, 1000 classes),
eval forward at batch 1 and 8 (build/benchmarks/bench_torchvision against torchvision.models.vgg16 /
vgg16_bn), PyTorch in its eval set-ups "best" (channels_last, inference_mode), "mkldnn" (to_mkldnn)
and "jit" (torch.jit.trace + torch.jit.optimize_for_inference: batch norm folded into the conv,
oneDNN layouts), all with tcmalloc; each ratio is against the fastest of the three.
PyTorch is skipped cleanly when it is not installed. OPENBLAS_CORETYPE is left as the machine sets
it (PyTorch uses oneDNN for these layers, not OpenBLAS).

Usage: /usr/bin/python3 benchmarks/compare_pytorch.py [--rounds 3] [--threads 2] [--build build] [--bf16]
       /usr/bin/python3 benchmarks/compare_pytorch.py --torchvision [--rounds 3] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

TORCH_PYTHON = "/usr/bin/python3"
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"

# Both PyTorch scripts start with this: seconds per call of fn, after two warm-up calls.
TIMED = textwrap.dedent(r"""
    import time
    def timed(fn, reps):
        for _ in range(2): fn()
        t = time.perf_counter()
        for _ in range(reps): fn()
        return (time.perf_counter() - t) / reps
""")

TORCH_BENCH = TIMED + textwrap.dedent(r"""
    import json, sys, time, torch
    from torch import nn
    threads, setup = int(sys.argv[1]), sys.argv[2]
    channels_last = setup in ("best", "mkldnn", "bf16")
    import contextlib
    autocast = (lambda: torch.cpu.amp.autocast(dtype=torch.bfloat16)) if setup == "bf16" else contextlib.nullcontext
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    def vgg(conv_arch, ratio, classes=10):
        blocks, cin = [], 1
        for n, cout in conv_arch:
            cout //= ratio
            layers = []
            for _ in range(n):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
                cin = cout
            blocks.append(nn.Sequential(*layers, nn.MaxPool2d(2, 2)))
        h = 4096 // ratio
        return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(cin * 49, h), nn.ReLU(), nn.Dropout(0.5),
                             nn.Linear(h, h), nn.ReLU(), nn.Dropout(0.5), nn.Linear(h, classes))
    arch = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {}
    if setup == "mkldnn":
        from torch.utils import mkldnn
        with torch.no_grad():
            net = mkldnn.to_mkldnn(vgg(arch, 8).eval())
            x = torch.rand(64, 1, 224, 224).to_mkldnn()
            out["vgg11_w8/eval_forward"] = 64 / timed(lambda: net(x), 10)
            wide = mkldnn.to_mkldnn(vgg(arch, 1).eval())
            xw = torch.rand(8, 1, 224, 224).to_mkldnn()
            out["vgg11_w1/eval_forward"] = 8 / timed(lambda: wide(xw), 3)
        print(json.dumps(out))
        sys.exit(0)
    net = vgg(arch, 8).to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(64, 1, 224, 224).to(memory_format=fmt)
    y = torch.randint(0, 10, (64,))
    loss_fn = nn.CrossEntropyLoss()
    def step():
        opt.zero_grad()
        with autocast():
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    net.train()
    out["vgg11_w8/train_step"] = 64 / timed(step, 5)
    net.eval()
    with torch.no_grad(), autocast():
        out["vgg11_w8/eval_forward"] = 64 / timed(lambda: net(x), 10)
        wide = vgg(arch, 1).to(memory_format=fmt).eval()
        xw = torch.rand(8, 1, 224, 224).to(memory_format=fmt)
        out["vgg11_w1/eval_forward"] = 8 / timed(lambda: wide(xw), 3)
    print(json.dumps(out))
""")

# torchvision's own nets, eval forward at batch 1 and 8, in one set-up (argv: threads, setup).
TORCH_TV_BENCH = TIMED + textwrap.dedent(r"""
    import json, sys, time, torch, torchvision
    threads, setup = int(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {}
    for name in ("vgg16", "vgg16_bn"):
        model = getattr(torchvision.models, name)().eval()
        for n, reps in ((1, 10), (8, 3)):
            x = torch.rand(n, 3, 224, 224)
            with torch.inference_mode():
                if setup == "mkldnn":
                    from torch.utils import mkldnn
                    net, xx = mkldnn.to_mkldnn(model), x.to_mkldnn()
                elif setup == "jit":
                    with torch.no_grad():
                        net, xx = torch.jit.optimize_for_inference(torch.jit.trace(model, x)), x
                else:
                    net = model.to(memory_format=torch.channels_last)
                    xx = x.to(memory_format=torch.channels_last)
                out[f"{name}/eval_forward_b{n}"] = n / timed(lambda: net(xx), reps)
    print(json.dumps(out))
""")


def run_vgg(build, threads, prefix="^vgg11", binary="bench_train"):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    res = subprocess.run([os.path.join(build, "benchmarks", binary), "--benchmark_format=json",
                          "--benchmark_min_time=2", f"--benchmark_filter={prefix}"], capture_output=True, text=True,
                         env=env, check=True)
    data = json.loads(res.stdout)
    run_vgg.context = data.get("context", {})
    # bf16/ rows carry their prefix; a row skipped (no AVX512-BF16) has no images/s.
    return {"/".join(b["name"].split("/")[:-2][-2:]): b["images/s"] for b in data["benchmarks"] if "images/s" in b}


def torch_version():
    res = subprocess.run([TORCH_PYTHON, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return res.stdout.strip() or "?"


def run_torch(threads, setup, script=TORCH_BENCH):
    env = dict(os.environ)
    if setup != "default" and os.path.exists(TCMALLOC):
        env["LD_PRELOAD"] = TCMALLOC
    res = subprocess.run([TORCH_PYTHON, "-c", script, str(threads), setup], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def row(results, name, keys):
    """Median of each set-up's runs of one benchmark, and its table cell (median ± half-range)."""
    medians, cells = {}, []
    for key in keys:
        values = [run[name] for run in results[key] if name in run]
        if values:
            medians[key] = statistics.median(values)
            cells.append(f"{medians[key]:7.1f} ±{(max(values) - min(values)) / 2:5.1f}")
        else:
            cells.append("-")
    return medians, cells


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", default="build")
    parser.add_argument("--no-default", action="store_true", help="skip PyTorch's default set-up")
    parser.add_argument("--bf16", action="store_true", help="also vgg in bf16 against PyTorch's bf16 autocast")
    parser.add_argument("--torchvision", action="store_true",
                        help="instead: full-width vgg16 / vgg16_bn eval forward, batch 1 and 8, against torchvision")
    args = parser.parse_args()
    if args.torchvision:
        return main_torchvision(args)
    have_torch = subprocess.run([TORCH_PYTHON, "-c", "import torch"], capture_output=True).returncode == 0
    if not have_torch:
        print("PyTorch is not installed for /usr/bin/python3 (apt-get install python3-torch): "
              "measuring vgg only", file=sys.stderr)
    if not os.path.exists(TCMALLOC):
        print(f"note: {TCMALLOC} not found (apt-get install libtcmalloc-minimal4): PyTorch's 'best' set-up "
              "runs with glibc malloc", file=sys.stderr)
    keys = ["vgg", "torch_best", "torch_mkldnn", "torch_default", "vgg_bf16", "torch_bf16"]
    results = {key: [] for key in keys}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        results["vgg"].append(run_vgg(args.build, args.threads))
        if have_torch:
            results["torch_best"].append(run_torch(args.threads, "best"))
            results["torch_mkldnn"].append(run_torch(args.threads, "mkldnn"))
            if not args.no_default:
                results["torch_default"].append(run_torch(args.threads, "default"))
        if args.bf16:
            results["vgg_bf16"].append(run_vgg(args.build, args.threads, "^bf16/vgg11"))
            if have_torch:
                results["torch_bf16"].append(run_torch(args.threads, "bf16"))
    names = list(results["vgg"][0])
    context = getattr(run_vgg, "context", {})
    # The first line names the machine and the path: figures from the pool's two CPU kinds differ.
    bf16_kernel = f"; vgg bf16 kernel: {context.get('vgg_bf16_kernel', '?')}" if args.bf16 else ""
    print(f"CPU: {context.get('vgg_cpu', context.get('cpu_model', '?'))}; vgg kernels: {context.get('vgg_kernels', '?')}"
          f"{bf16_kernel}; torch {torch_version() if have_torch else 'absent'}")
    print(f"median ± half-range of {args.rounds} alternating rounds, {args.threads} threads")
    print(f"{'benchmark (images/s)':24} {'vgg':>16} {'torch best':>16} {'torch mkldnn':>16} {'torch default':>16}"
          f" {'vgg/fastest torch':>18}")
    for name in names:
        medians, cells = row(results, name, keys[:4])  # the fp32 table; bf16 has its own below
        torch_keys = [k for k in ("torch_best", "torch_mkldnn") if k in medians]
        if torch_keys:
            fastest = max(torch_keys, key=lambda k: medians[k])
            ratio = f"{medians['vgg'] / medians[fastest]:6.2f}x ({fastest[6:]})"
        else:
            ratio = "-"
        print(f"{name:24} " + " ".join(f"{c:>16}" for c in cells) + f" {ratio:>18}")
    if args.bf16:
        print(f"\nbf16 mixed precision: vgg (bf16 products, fp32 sums) vs PyTorch bf16 autocast")
        print(f"{'benchmark (images/s)':24} {'vgg bf16':>16} {'torch bf16':>16} {'vgg fp32':>16} {'vgg bf16/torch':>15} "
              f"{'bf16/fp32':>10}")
        for name in names:
            medians, cells = row(results, name, ("vgg_bf16", "torch_bf16", "vgg"))
            vs_torch = f"{medians['vgg_bf16'] / medians['torch_bf16']:6.2f}x" if {"vgg_bf16", "torch_bf16"} <= medians.keys() else "-"
            vs_fp32 = f"{medians['vgg_bf16'] / medians['vgg']:6.2f}x" if {"vgg_bf16", "vgg"} <= medians.keys() else "-"
            print(f"{name:24} " + " ".join(f"{c:>16}" for c in cells) + f" {vs_torch:>15} {vs_fp32:>10}")
    print(json.dumps(results), file=open(os.path.join(args.build, "compare_pytorch.json"), "w"))


def main_torchvision(args):
    have_torch = subprocess.run([TORCH_PYTHON, "-c", "import torchvision"], capture_output=True).returncode == 0
    if not have_torch:
        print("torchvision is not installed for /usr/bin/python3 (apt-get install python3-torchvision): "
              "measuring vgg only", file=sys.stderr)
    setups = ["best", "mkldnn", "jit"]
    keys = ["vgg"] + [f"torch_{s}" for s in setups]
    results = {key: [] for key in keys}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        results["vgg"].append(run_vgg(args.build, args.threads, "^tv/", "bench_torchvision"))
        if have_torch:
            for setup in setups:
                results[f"torch_{setup}"].append(run_torch(args.threads, setup, TORCH_TV_BENCH))
    context = getattr(run_vgg, "context", {})
    print(f"CPU: {context.get('vgg_cpu', context.get('cpu_model', '?'))}; vgg kernels: {context.get('vgg_kernels', '?')}; "
          f"torch {torch_version() if have_torch else 'absent'}")
    print(f"median ± half-range of {args.rounds} alternating rounds, {args.threads} threads; torchvision nets, eval")
    print(f"{'benchmark (images/s)':24} {'vgg':>16} {'torch best':>16} {'torch mkldnn':>16} {'torch jit':>16}"
          f" {'vgg/fastest torch':>18}")
    for name in results["vgg"][0]:
        medians, cells = row(results, name, keys)
        torch_keys = [k for k in keys[1:] if k in medians]
        if torch_keys:
            fastest = max(torch_keys, key=lambda k: medians[k])
            ratio = f"{medians['vgg'] / medians[fastest]:6.2f}x ({fastest[6:]})"
        else:
            ratio = "-"
        print(f"{name:24} " + " ".join(f"{c:>16}" for c in cells) + f" {ratio:>18}")
    print(json.dumps(results), file=open(os.path.join(args.build, "compare_pytorch_torchvision.json"), "w"))


if __name__ == "__main__":
    main()
