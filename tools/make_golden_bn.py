#!/usr/bin/python3
"""Write tests/golden/bn_odd.safetensors: PyTorch reference values for vgg's batch norm.

Run with Debian's PyTorch (the pyenv ``python3`` first on PATH has no torch):

    /usr/bin/python3 tools/make_golden_bn.py            # (re)write tests/golden/bn_odd.safetensors
    /usr/bin/python3 tools/make_golden_bn.py --check    # regenerate in a temp dir, compare bytes

CI never runs this; the output is committed.  Float32 on the CPU, one thread, deterministic
algorithms, oneDNN off (as tools/make_golden.py), so two runs write byte-identical files.

Model
-----
``BnVgg``: blocks ``vgg_block_1`` .. (``nn.Sequential`` of NumConvs x [Conv2d(in, out, 3,
padding=1), BatchNorm2d(out), ReLU] then MaxPool2d(2, 2)) and the head ``fc`` = Sequential(Flatten,
Linear, ReLU, Dropout(0), Linear, ReLU, Dropout(0), Linear): the state_dict names of
``vgg::Vgg<Input<3,13,11>, VggBlock<2,3,5,BatchNorm>, VggBlock<1,5,6,BatchNorm>, Classifier<7,4,0.0>>``
(``vgg_block_1.1.running_mean``, ``vgg_block_1.4.num_batches_tracked``, ...).  Dropout is 0, so train
mode differs from eval mode by the batch norm only.  Order: ``torch.manual_seed(3)``, the model
(torch's default init), ``x = torch.rand(5, 3, 13, 11)``, ``labels = torch.randint(0, 4, (5,))``.
Odd sizes on purpose: 13 x 11 pools to 6 x 5 (a row and a column dropped), then 3 x 2.

Tensors (F32 unless noted)
--------------------------
``param.<name>``       the initial state_dict: parameters, running statistics, ``num_batches_tracked`` (I64 [])
``input``, ``labels``  the batch (labels I64)
``logits``, ``loss``   train mode (batch statistics) at the initial state; ``loss`` is
                       ``nn.CrossEntropyLoss()`` (mean), shape []
``grad.<name>``        d loss / d parameter of that pass; ``grad.input`` d loss / d input
``sgd.losses`` [3]     train mode, from the initial state: 3 x (zero_grad, forward, loss, backward,
                       torch.optim.SGD(lr=0.05, momentum=0.9).step()) on the same batch
``sgd.<name>``         the whole state_dict after those 3 steps (running statistics after 3 batches,
                       ``num_batches_tracked`` 3)
``eval.logits``, ``eval.loss``, ``eval.grad.<name>``, ``eval.grad.input``
                       eval mode (running statistics) at the state after the 3 steps

SGD, not Adam: a conv bias before a batch norm has a zero gradient in exact arithmetic (the norm
subtracts the channel mean), so its float gradient is rounding noise of order 1e-9, which Adam's
normalisation would turn into steps of size lr in arbitrary directions.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

try:
    import torch
    from torch import nn
except ImportError:
    sys.exit("make_golden_bn.py: torch is not importable by " + sys.executable +
             "; run it with Debian's PyTorch: /usr/bin/python3 tools/make_golden_bn.py")

import safetensors_torch as st  # noqa: E402

FORMAT = "vgg-golden-bn-1"
COMMAND = "/usr/bin/python3 tools/make_golden_bn.py"
NAME = "bn_odd"
INPUT = (3, 13, 11)
BLOCKS = [(2, 3, 5), (1, 5, 6)]
HIDDEN, CLASSES, BATCH, SEED, STEPS = 7, 4, 5, 3, 3
SGD = dict(lr=0.05, momentum=0.9)


class BnVgg(nn.Module):
    def __init__(self):
        super().__init__()
        c, h, w = INPUT
        for i, (num_convs, cin, cout) in enumerate(BLOCKS, start=1):
            assert cin == c
            layers: List[nn.Module] = []
            for j in range(num_convs):
                layers += [nn.Conv2d(cin if j == 0 else cout, cout, kernel_size=3, padding=1),
                           nn.BatchNorm2d(cout), nn.ReLU()]
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            setattr(self, f"vgg_block_{i}", nn.Sequential(*layers))
            c, h, w = cout, h // 2, w // 2
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, HIDDEN), nn.ReLU(), nn.Dropout(0.0),
                                nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Dropout(0.0), nn.Linear(HIDDEN, CLASSES))

    def forward(self, x):
        for i in range(1, len(BLOCKS) + 1):
            x = getattr(self, f"vgg_block_{i}")(x)
        return self.fc(x)


def architecture() -> str:
    parts = ["Input<{},{},{}>".format(*INPUT)]
    parts += ["VggBlock<{},{},{},BatchNorm>".format(*b) for b in BLOCKS]
    return " ".join(parts + [f"Classifier<{HIDDEN},{CLASSES},0>"])


def clone_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pass_with_gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, prefix: str) -> Dict[str, torch.Tensor]:
    """logits, loss and every gradient of one forward/backward in the model's current mode."""
    model.zero_grad()
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    loss = nn.CrossEntropyLoss()(logits, labels)
    loss.backward()
    out = {prefix + "logits": logits.detach().clone(), prefix + "loss": loss.detach().clone().reshape(())}
    for k, p in model.named_parameters():
        out[f"{prefix}grad.{k}"] = p.grad.detach().clone()
    out[prefix + "grad.input"] = xg.grad.detach().clone()
    return out


def compute(initial: Dict[str, torch.Tensor], x: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    model = BnVgg().to(x.dtype)
    model.load_state_dict(initial)
    model.train()
    out = pass_with_gradients(model, x, labels, "")

    model.load_state_dict(initial)  # the pass above moved the running statistics
    opt = torch.optim.SGD(model.parameters(), lr=SGD["lr"], momentum=SGD["momentum"], foreach=False)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.CrossEntropyLoss()(model(x), labels)
        losses.append(loss.detach().clone())
        loss.backward()
        opt.step()
    if not torch.equal(losses[0], out["loss"]):
        raise SystemExit("make_golden_bn.py: the first SGD loss differs from the gradient pass's")
    out["sgd.losses"] = torch.stack(losses)
    out.update({f"sgd.{k}": v for k, v in clone_state(model).items()})

    model.eval()
    out.update(pass_with_gradients(model, x, labels, "eval."))
    return out


def diagnose(model: nn.Module, x: torch.Tensor, out: Dict[str, torch.Tensor]) -> None:
    """Fail on a degenerate case: dead ReLUs, tied positive max-pool windows, equal logits."""
    relu_out, pool_in, hooks = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            hooks.append(m.register_forward_hook(lambda m, i, o, n=name: relu_out.append((n, o.detach()))))
        elif isinstance(m, nn.MaxPool2d):
            hooks.append(m.register_forward_hook(lambda m, i, o: pool_in.append(i[0].detach())))
    model.train()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    problems = []
    for name, o in relu_out:
        share = (o > 0).float().mean().item()
        print(f"  ReLU {name}: {share:.0%} positive")
        if share < 0.2:
            problems.append(f"ReLU {name} is mostly dead")
    ties = 0
    for inp in pool_in:
        n, c, h, w = inp.shape
        win = inp[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
        win = win.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
        top = win.max(-1, keepdim=True).values
        ties += int((((win == top).sum(-1) > 1) & (top.squeeze(-1) > 0)).sum())
    if ties:
        problems.append(f"{ties} max-pool windows have tied positive maxima")
    for prefix in ("", "eval."):
        logits = out[prefix + "logits"]
        if (logits - logits.mean(0)).abs().max() <= 1e-4 * logits.abs().max():
            problems.append(f"{prefix}logits are equal across samples")
    if problems:
        raise SystemExit("make_golden_bn.py: degenerate case: " + "; ".join(problems))


def metadata() -> Dict[str, str]:
    return {
        "format": FORMAT,
        "config": NAME,
        "architecture": architecture(),
        "batch_size": str(BATCH),
        "seed": str(SEED),
        "dtype": "F32",
        "loss": "nn.CrossEntropyLoss() mean over the batch",
        "order": "manual_seed(seed); model init (torch defaults); input=rand(N,C,H,W); labels=randint(0,classes,(N,))",
        "steps": str(STEPS),
        "sgd": f"torch.optim.SGD(lr={SGD['lr']!r}, momentum={SGD['momentum']!r}), train mode",
        "torch_version": torch.__version__,
        "command": COMMAND,
    }


def generate(out_dir: str) -> str:
    print(f"{NAME}: {architecture()}, batch {BATCH}, seed {SEED}")
    torch.manual_seed(SEED)
    model = BnVgg()
    x = torch.rand(BATCH, *INPUT, dtype=torch.float32)
    labels = torch.randint(0, CLASSES, (BATCH,), dtype=torch.int64)
    initial = clone_state(model)
    out = compute(initial, x, labels)
    model.load_state_dict(initial)
    diagnose(model, x, out)

    # float32 against the same computation in float64: the floor for the C++ tolerances.
    out64 = compute({k: (v.double() if v.is_floating_point() else v) for k, v in initial.items()}, x.double(), labels)
    worst: Dict[str, float] = {}
    for k, a in out.items():
        if not a.is_floating_point():
            continue
        b = out64[k]
        scale = b.abs().max().item() or 1.0
        group = k.split(".")[0] if k.split(".")[0] in ("grad", "sgd", "eval") else k
        if "grad." in k and k.startswith(tuple(f"{p}grad.vgg_block_" for p in ("", "eval."))) and \
                k.endswith(".bias") and int(k.split(".")[-2]) % 3 == 0 and not k.startswith("eval."):
            # A conv bias before a batch norm: 0 in exact arithmetic; its float value is noise.
            worst["conv-bias-grad (absolute)"] = max(worst.get("conv-bias-grad (absolute)", 0.0), a.abs().max().item())
            continue
        worst[group] = max(worst.get(group, 0.0), (a.double() - b).abs().max().item() / scale)
    print("  float32 vs float64, max |d| / max |f64| per group: " +
          ", ".join(f"{g} {v:.1e}" for g, v in worst.items()))
    print(f"  loss {out['loss'].item():.9g}, sgd losses {out['sgd.losses'].tolist()}, eval loss {out['eval.loss'].item():.9g}")

    tensors: Dict[str, torch.Tensor] = {f"param.{k}": v for k, v in initial.items()}
    tensors.update(input=x, labels=labels)
    tensors.update(out)
    path = os.path.join(out_dir, NAME + ".safetensors")
    st.save_file(tensors, path, metadata=metadata())
    back = st.load_file(path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors), "round trip"
    return path


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
            path = generate(tmp)
            same = filecmp.cmp(path, os.path.join(args.out, os.path.basename(path)), shallow=False)
        print(f"make_golden_bn.py: {args.out} is {'up to date (byte-identical)' if same else 'out of date'}")
        return 0 if same else 1
    os.makedirs(args.out, exist_ok=True)
    path = generate(args.out)
    print(f"  wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
