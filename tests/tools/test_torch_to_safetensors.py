#!/usr/bin/env python3
"""Checks of tools/torch_to_safetensors.py (needs torch and torchvision, so not part of CTest or CI):

    /usr/bin/python3 tests/tools/test_torch_to_safetensors.py

Small nets built with torchvision's own VGG class and make_layers at 1/32 width (full-width files
are 0.5 GB); the full-size path is tools/torchvision_parity.py.
"""

import os
import subprocess
import sys
import tempfile
import unittest

import torch
from torchvision.models import vgg as tvvgg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "torch_to_safetensors.py")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import safetensors_torch as st  # noqa: E402


def small(cfg="A", batch_norm=False, classes=10, divisor=32):
    layers = [v if v == "M" else v // divisor for v in tvvgg.cfgs[cfg]]
    model = tvvgg.VGG(tvvgg.make_layers(layers, batch_norm=batch_norm), num_classes=classes)
    hidden = 4096 // divisor
    model.classifier = torch.nn.Sequential(torch.nn.Linear(512 // divisor * 49, hidden), torch.nn.ReLU(True),
                                           torch.nn.Dropout(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(True),
                                           torch.nn.Dropout(), torch.nn.Linear(hidden, classes))
    return model


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


class TorchToSafetensors(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def path(self, name):
        return os.path.join(self.dir.name, name)

    def test_round_trip_keeps_names_values_and_dtypes(self):
        model = small("D", batch_norm=True)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-1, 1)
                    m.num_batches_tracked.fill_(3)
        state = model.state_dict()
        torch.save(state, self.path("a.pth"))
        out = run(self.path("a.pth"), self.path("a.safetensors"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("vgg::torchvision::vgg16_bn<10, 32>", out.stdout)
        converted = st.load_file(self.path("a.safetensors"))
        self.assertEqual(set(converted), set(state))
        self.assertEqual(converted["features.1.num_batches_tracked"].dtype, torch.int64)
        self.assertEqual(converted["features.1.num_batches_tracked"].shape, torch.Size([]))
        back = run("--to-torch", self.path("a.safetensors"), self.path("b.pth"))
        self.assertEqual(back.returncode, 0, back.stderr)
        restored = torch.load(self.path("b.pth"))
        self.assertEqual(list(restored), list(state))  # torchvision's key order
        for name in state:
            self.assertTrue(torch.equal(restored[name], state[name]), name)
        small("D", batch_norm=True).load_state_dict(restored)  # strict

    def test_wrapped_and_half_precision_files(self):
        model = small("A").half()
        torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
                   self.path("wrapped.pth"))
        out = run(self.path("wrapped.pth"), self.path("w.safetensors"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("vgg::torchvision::vgg11<10, 32>", out.stdout)
        converted = st.load_file(self.path("w.safetensors"))
        self.assertEqual(converted["features.0.weight"].dtype, torch.float32)
        self.assertIn("classifier.6.bias", converted)

    def test_refusals_name_what_is_wrong(self):
        torch.save({"fc.weight": torch.zeros(2, 2)}, self.path("other.pth"))
        out = run(self.path("other.pth"), self.path("x.safetensors"))
        self.assertEqual(out.returncode, 1)
        self.assertIn("unexpected keys 'fc.weight'", out.stderr)
        self.assertFalse(os.path.exists(self.path("x.safetensors")))

        state = small("A").state_dict()
        state["classifier.0.weight"] = torch.zeros(128, 100)
        torch.save(state, self.path("pool.pth"))
        out = run(self.path("pool.pth"), self.path("x.safetensors"))
        self.assertEqual(out.returncode, 1)
        self.assertIn("classifier.0.weight takes 100 inputs, expected 16 x 7 x 7 = 784", out.stderr)

        state = small("A").state_dict()
        del state["classifier.3.bias"]
        torch.save(state, self.path("missing.pth"))
        out = run(self.path("missing.pth"), self.path("x.safetensors"))
        self.assertEqual(out.returncode, 1)
        self.assertIn("classifier.3", out.stderr)

    def test_vgg_training_checkpoint_loses_optimizer_tensors(self):
        state = dict(small("A").state_dict())
        state["optimizer.exp_avg.features.0.weight"] = torch.zeros_like(state["features.0.weight"])
        state["train.epoch"] = torch.tensor(2)
        st.save_file(state, self.path("train.safetensors"))
        out = run("--to-torch", self.path("train.safetensors"), self.path("t.pth"))
        self.assertEqual(out.returncode, 0, out.stderr)
        restored = torch.load(self.path("t.pth"))
        self.assertFalse(any(k.startswith(("optimizer.", "train.")) for k in restored))
        small("A").load_state_dict(restored)


if __name__ == "__main__":
    unittest.main()
