#!/usr/bin/env python3
"""Where PyTorch's VGG-11 eval forward spends its time, operator by operator (torch.profiler), in the
set-ups compare_pytorch.py times: to say which of our layers is behind, not only by how much.

Runs the eval forward of VGG-11 (width 1 or 8, 1x224x224) with tcmalloc preloaded (when
libtcmalloc-minimal4 is installed), channels_last, and with --bf16 inside one
torch.cpu.amp.autocast(dtype=torch.bfloat16) region, as compare_pytorch.py's "bf16" set-up does (so
autocast's cache keeps each weight's bf16 copy across the forwards), and prints ms per batch per
operator, self time, largest first.

Usage: /usr/bin/python3 benchmarks/profile_pytorch.py [--width 1] [--batch 8] [--bf16] [--threads 2] [--reps 5]
"""
import argparse
import os
import sys

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1, choices=[1, 2, 4, 8], help="channels divided by this")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as compare_pytorch.py --bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="profiled forwards (after 3 warm-up ones)")
    args = parser.parse_args()
    if args.batch < 1 or args.reps < 1 or args.threads < 1:
        sys.exit("profile_pytorch.py: --batch, --reps and --threads must be at least 1")
    # tcmalloc must be loaded before the interpreter starts: run again under it, once.
    if os.path.exists(TCMALLOC) and TCMALLOC not in os.environ.get("LD_PRELOAD", ""):
        env = dict(os.environ, LD_PRELOAD=TCMALLOC)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    try:
        import torch
        from torch import nn
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        sys.exit("profile_pytorch.py: PyTorch is not installed for " + sys.executable +
                 " (apt-get install python3-torch; run it with /usr/bin/python3)")
    import contextlib

    torch.set_num_threads(args.threads)
    arch = ((1, 1, 64), (1, 64, 128), (2, 128, 256), (2, 256, 512), (2, 512, 512))
    w = args.width

    def block(n, cin, cout):
        layers = []
        for _ in range(n):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
        return layers + [nn.MaxPool2d(2, 2)]

    layers = []
    for n, cin, cout in arch:
        layers += block(n, cin if cin == 1 else cin // w, cout // w)
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 // w * 49, 4096 // w), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(4096 // w, 4096 // w), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096 // w, 10))
    net = net.eval().to(memory_format=torch.channels_last)
    x = torch.rand(args.batch, 1, 224, 224).to(memory_format=torch.channels_last)
    autocast = torch.cpu.amp.autocast(dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for _ in range(3):
            net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.reps):
                net(x)
    rows = [(e.self_cpu_time_total / 1000.0 / args.reps, e.count // args.reps, e.key) for e in prof.key_averages()]
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"PyTorch {torch.__version__}, VGG-11 width/{w}, batch {args.batch}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, channels_last, {args.threads} threads, "
          f"tcmalloc {'on' if TCMALLOC in os.environ.get('LD_PRELOAD', '') else 'off'}")
    print(f"{'operator':36} {'ms/batch':>9} {'calls':>6}")
    for ms, calls, name in rows:
        if ms >= 0.05:
            print(f"{name:36} {ms:9.2f} {calls:6d}")
    print(f"{'total (self time)':36} {total:9.2f}")


if __name__ == "__main__":
    main()
