#!/usr/bin/env python3
"""How the cost of VGG-11 grows with batch size and width: runs bench_train's scaling benchmarks,
prints them as Markdown tables and plots them (PNG).

Left panel: images/s against batch size (width/8 training step and eval forward, full-width eval).
Right panel: milliseconds per image against the width divisor at batch 8, with the FLOPs per image
scaled to the width-8 eval time for reference (where time follows FLOPs the two lines are parallel).

Needs matplotlib for the plot (Debian: apt-get install python3-matplotlib; run with /usr/bin/python3);
without it the tables are still printed.

Usage: /usr/bin/python3 benchmarks/plot_scaling.py [--build build] [--out docs/scaling.png]
                                                  [--json saved.json] [--min-time 1]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

def run_benchmarks(build, min_time):
    exe = os.path.join(build, "benchmarks", "bench_train")
    if not os.path.exists(exe):
        sys.exit(f"{exe} not found: build the benchmarks first (cmake --build {build} --target bench_train)")
    res = subprocess.run([exe, "--benchmark_format=json", f"--benchmark_min_time={min_time}",
                          "--benchmark_filter=^vgg11|^scaling"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"bench_train failed ({res.returncode}):\n{res.stderr}")
    return json.loads(res.stdout)


def series(data):
    """({(width, kind): {batch: images/s}}, {width: forward FLOPs per image}) from bench_train's JSON
    (its eval GFLOP/s counter is Vgg::flops_per_sample x images/s)."""
    out, flops = {}, {}
    for b in data["benchmarks"]:
        m = re.match(r"(?:scaling/)?vgg11_w(\d+)/(train_step|eval_forward)/(\d+)", b["name"])
        if m:
            out.setdefault((int(m[1]), m[2]), {})[int(m[3])] = b["images/s"]
            if m[2] == "eval_forward":
                flops[int(m[1])] = b["GFLOP/s"] * 1e9 / b["images/s"]
    return out, flops


def tables(s, flops):
    lines = ["| series | " + " | ".join(f"batch {n}" for n in (1, 2, 4, 8, 16, 32, 64, 128)) + " |",
             "|---|" + "---:|" * 8]
    for key in ((8, "train_step"), (8, "eval_forward"), (1, "eval_forward")):
        if key in s:
            cells = [f"{s[key][n]:.1f}" if n in s[key] else "" for n in (1, 2, 4, 8, 16, 32, 64, 128)]
            lines.append(f"| width/{key[0]} {key[1]} (images/s) | " + " | ".join(cells) + " |")
    lines += ["", "| width divisor | forward GFLOP/image | train ms/image (batch 8) | eval ms/image (batch 8) |",
              "|---:|---:|---:|---:|"]
    for w in (1, 2, 4, 8):
        train = s.get((w, "train_step"), {}).get(8)
        ev = s.get((w, "eval_forward"), {}).get(8)
        gflop = f"{flops[w] / 1e9:.3f}" if w in flops else "-"
        lines.append(f"| {w} | {gflop} | {1000 / train:.2f} | {1000 / ev:.2f} |" if train and ev else
                     f"| {w} | {gflop} | - | - |")
    return "\n".join(lines)


def plot(s, flops, out, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not found (apt-get install python3-matplotlib): no plot written", file=sys.stderr)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in (((8, "train_step"), "width/8 training step", "o-"),
                              ((8, "eval_forward"), "width/8 eval forward", "s-"),
                              ((1, "eval_forward"), "full width eval forward", "^-")):
        if key in s:
            batches = sorted(s[key])
            left.plot(batches, [s[key][n] for n in batches], style, label=label)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("batch size")
    left.set_ylabel("images/s")
    left.set_title("throughput against batch size")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    widths = [w for w in (1, 2, 4, 8) if 8 in s.get((w, "eval_forward"), {}) and 8 in s.get((w, "train_step"), {})]
    if widths:
        train = [1000 / s[(w, "train_step")][8] for w in widths]
        ev = [1000 / s[(w, "eval_forward")][8] for w in widths]
        right.plot(widths, train, "o-", label="training step")
        right.plot(widths, ev, "s-", label="eval forward")
        if all(w in flops for w in widths):
            scale = ev[-1] / flops[widths[-1]]
            right.plot(widths, [flops[w] * scale for w in widths], "k--",
                       label=f"FLOPs (scaled to width/{widths[-1]} eval)")
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.set_xticks(widths, [f"/{w}" for w in widths])
        right.set_xlabel("width divisor (batch 8)")
        right.set_ylabel("ms per image")
        right.set_title("cost against width")
        right.grid(True, which="both", alpha=0.3)
        right.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=directory)  # written whole, then renamed
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default="build")
    parser.add_argument("--out", default="docs/scaling.png")
    parser.add_argument("--json", help="plot this saved bench_train JSON instead of running the benchmark")
    parser.add_argument("--min-time", default="1", help="--benchmark_min_time per benchmark (seconds)")
    args = parser.parse_args()
    if args.json:
        with open(args.json) as f:
            data = json.load(f)
    else:
        data = run_benchmarks(args.build, args.min_time)
        saved = os.path.join(args.build, "scaling.json")
        with open(saved, "w") as f:
            json.dump(data, f)
        print(f"raw results: {saved}", file=sys.stderr)
    s, flops = series(data)
    print(tables(s, flops))
    ctx = data.get("context", {})
    title = f"vgg bench_train, {ctx.get('num_cpus', '?')} CPUs, {ctx.get('date', '')}"
    if plot(s, flops, args.out, title):
        print(f"plot: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
