#!/usr/bin/env python3
"""Checks of tools/plot_metrics.py (needs matplotlib, so not part of CTest or CI):

    /usr/bin/python3 tests/tools/test_plot_metrics.py
"""

import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "plot_metrics.py")
GOOD = ('{"epoch": 1, "train_loss": 0.6, "train_acc": 0.7, "test_loss": 0.5, "test_acc": 0.8}\n'
        '{"epoch": 2, "train_loss": 0.4, "train_acc": 0.8, "test_loss": 0.4, "test_acc": 0.85}\n')


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


class PlotMetrics(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def log(self, text, name="run.metrics.jsonl"):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_writes_a_png_next_to_the_log(self):
        r = run(self.log(GOOD))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.dir.name, "run.metrics.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_the_committed_recipe_log_plots(self):
        out = os.path.join(self.dir.name, "recipe.png")
        r = run(os.path.join(ROOT, "docs", "results_recipe.metrics.jsonl"), "-o", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("5 epochs", r.stdout)

    def test_a_restarted_log_plots_its_last_run(self):
        r = run(self.log(GOOD + GOOD), "-o", os.path.join(self.dir.name, "x.png"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("starts again at epoch 1", r.stderr)
        self.assertIn("2 epochs", r.stdout)

    def test_bad_logs_are_refused_naming_the_line(self):
        cases = {
            "": "holds no epochs",
            GOOD + "{not json\n": "line 3: not JSON",
            "[1, 2]\n": "line 1: expected a JSON object",
            '{"epoch": 1, "train_loss": 0.5}\n': "missing field(s) train_acc, test_acc",
            '{"epoch": 1, "train_loss": NaN, "train_acc": 1, "test_acc": 1}\n': "train_loss must be a finite number",
            '{"epoch": 0, "train_loss": 1, "train_acc": 1, "test_acc": 1}\n': "epoch must be an integer from 1",
            '{"epoch": 1, "train_loss": "x", "train_acc": 1, "test_acc": 1}\n': 'train_loss must be a finite number, found "x"',
        }
        for text, message in cases.items():
            with self.subTest(message=message):
                r = run(self.log(text), "-o", os.path.join(self.dir.name, "bad.png"))
                self.assertEqual(r.returncode, 1)
                self.assertIn(message, r.stderr)
                self.assertFalse(os.path.exists(os.path.join(self.dir.name, "bad.png")))

    def test_a_missing_log_and_usage_errors(self):
        r = run(os.path.join(self.dir.name, "absent.jsonl"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read the metrics log", r.stderr)
        self.assertEqual(run().returncode, 2)


if __name__ == "__main__":
    unittest.main()
