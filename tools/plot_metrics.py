#!/usr/bin/env python3
"""Draws a vgg-train run's loss and accuracy per epoch as a PNG, as the D2L chapter does.

Reads the run's JSON-lines metrics log (``<save>.metrics.jsonl``: one object per epoch with
``epoch``, ``train_loss``, ``train_acc``, ``test_acc`` and, when vgg-train wrote it, ``test_loss``)
and draws train loss, train accuracy and test accuracy (and test loss when present) against the
epoch on one set of axes, like d2l's Animator in ``d2l.train_ch6``.

    python3 tools/plot_metrics.py runs/vgg11_w8_224.safetensors.metrics.jsonl -o curves.png

A log that restarts (a fresh run with ``--overwrite`` appends to the old log) is plotted from its
last start, with a note on stderr. Exit status: 0 success, 1 a bad log or an unwritable output,
2 usage error. Needs matplotlib (Debian: python3-matplotlib); nothing else.
"""

import argparse
import json
import math
import os
import sys

REQUIRED = ("epoch", "train_loss", "train_acc", "test_acc")
CURVES = (  # field, label, style (d2l's Animator: solid, dashed magenta, dash-dot green)
    ("train_loss", "train loss", "-"),
    ("train_acc", "train acc", "m--"),
    ("test_acc", "test acc", "g-."),
    ("test_loss", "test loss", "r:"),
)


class LogError(Exception):
    """A metrics log that cannot be plotted; the message names the file and the line."""


def read_log(path):
    """Returns the epochs of the log's last run as a list of dicts (numbers as floats, epoch int).

    Raises LogError naming the file, the line and what is wrong: unreadable, empty, not JSON, not an
    object, a field missing, a value that is not a finite number, an epoch below 1.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LogError(f"cannot read the metrics log '{path}': {e}") from e
    rows = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"metrics log '{path}', line {number}"
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise LogError(f"{where}: not JSON ({e.msg} at column {e.colno}); "
                           "expected one JSON object per line as vgg-train writes") from e
        if not isinstance(row, dict):
            raise LogError(f"{where}: expected a JSON object, found {type(row).__name__}")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise LogError(f"{where}: missing field(s) {', '.join(missing)}; expected {', '.join(REQUIRED)}")
        for key, _, _ in CURVES:
            if key not in row:
                continue
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise LogError(f"{where}: {key} must be a finite number, found {json.dumps(value)}")
        epoch = row["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise LogError(f"{where}: epoch must be an integer from 1, found {json.dumps(epoch)}")
        if rows and epoch <= rows[-1]["epoch"]:
            print(f"plot_metrics: note: {where} starts again at epoch {epoch}; plotting from there",
                  file=sys.stderr)
            rows = []
        rows.append(row)
    if not rows:
        raise LogError(f"the metrics log '{path}' holds no epochs")
    return rows


def plot(rows, output, title=None):
    """Writes the PNG at `output` atomically (temporary file, then rename)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(3.5, 2.5), dpi=100)
    for key, label, style in CURVES:
        if all(key in r for r in rows):
            ax.plot(epochs, [r[key] for r in rows], style, label=label, marker="." if len(rows) == 1 else None)
    ax.set_xlabel("epoch")
    ax.set_xlim(min(epochs) - 0.1 if len(rows) == 1 else min(epochs), max(epochs) + (0.1 if len(rows) == 1 else 0))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="small")
    fig.tight_layout()
    temporary = output + ".tmp"
    try:
        fig.savefig(temporary, format="png")
        os.replace(temporary, output)
    except OSError as e:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise LogError(f"cannot write '{output}': {e}") from e
    finally:
        plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Draw a vgg-train metrics log (JSON lines) as a PNG.")
    parser.add_argument("log", help="the run's metrics log, <save>.metrics.jsonl")
    parser.add_argument("-o", "--output", help="the PNG to write (default: the log's path with .png)")
    parser.add_argument("--title", help="a title above the axes")
    args = parser.parse_args(argv)
    output = args.output or (args.log[:-len(".jsonl")] if args.log.endswith(".jsonl") else args.log) + ".png"
    try:
        rows = read_log(args.log)
        plot(rows, output, args.title)
    except LogError as e:
        print(f"plot_metrics: {e}", file=sys.stderr)
        return 1
    print(f"wrote {output} ({len(rows)} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
