#!/usr/bin/env python3
"""Two builds of the same benchmark side by side, alternating, with ratios.

Shared machines drift: absolute times from two separate runs cannot be compared, ratios from runs
that alternate in one session can. This runs one Google Benchmark binary from a base build and from
a new build in turns (base, new, base, new, ...), each with the same filter, and prints per
benchmark the median time of each and the ratio new / base (below 1: the new build is faster),
with the spread of the per-round ratios.

Usage (from the repository root; the base build is, for example, a worktree of an older commit):
  python3 benchmarks/compare_builds.py --base ../base/build --new build \\
      --binary bench_blocks --filter 'vgg11_w8/block' --rounds 5
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run(build, binary, flt, min_time):
    path = os.path.join(build, "benchmarks", binary)
    if not os.access(path, os.X_OK):
        sys.exit(f"compare_builds: {path} is not an executable benchmark (build the '{binary}' target there)")
    # JSON through a file: some benchmarks print their own lines (the FMA peak) on stdout.
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        res = subprocess.run([path, f"--benchmark_out={report.name}", "--benchmark_out_format=json",
                              f"--benchmark_filter={flt}", f"--benchmark_min_time={min_time}"],
                             capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"compare_builds: {path} failed ({res.returncode}):\n{res.stderr[-2000:]}")
        out = json.load(open(report.name))
    return {b["name"]: b["real_time"] for b in out["benchmarks"] if b.get("run_type", "iteration") == "iteration"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="base build folder")
    parser.add_argument("--new", required=True, help="new build folder")
    parser.add_argument("--binary", default="bench_blocks")
    parser.add_argument("--filter", default=".")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", default="0.5")
    args = parser.parse_args()
    if args.rounds < 1:
        sys.exit("compare_builds: --rounds must be at least 1")
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    print(f"# {args.binary} --benchmark_filter='{args.filter}', {args.rounds} alternating rounds, {model}")
    base, new = {}, {}
    for r in range(args.rounds):
        for store, build in ((base, args.base), (new, args.new)):
            for name, t in run(build, args.binary, args.filter, args.min_time).items():
                store.setdefault(name, []).append(t)
        print(f"# round {r + 1} done", file=sys.stderr)
    print(f"{'benchmark':<48} {'base ms':>9} {'new ms':>9} {'new/base':>9} {'spread':>15}")
    for name in base:
        if name not in new:
            continue
        ratios = [n / b for b, n in zip(base[name], new[name])]
        print(f"{name:<48} {statistics.median(base[name]):9.3f} {statistics.median(new[name]):9.3f} "
              f"{statistics.median(ratios):9.3f} {min(ratios):7.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
