#!/usr/bin/python3
"""Write tests/golden/*.safetensors: PyTorch reference values for the C++ VGG tests.

Run with Debian's PyTorch (the pyenv ``python3`` first on PATH has no torch):

    /usr/bin/python3 tools/make_golden.py            # (re)write tests/golden/*.safetensors
    /usr/bin/python3 tools/make_golden.py --check    # regenerate in a temp dir, compare bytes

CI never runs this; the outputs are committed.  Everything is float32 on the CPU, one thread,
deterministic algorithms, so two runs with the same torch write byte-identical files.

Model
-----
``GoldenVgg`` mirrors vgg's tensor names exactly: attributes ``vgg_block_1`` .. ``vgg_block_K``
(``nn.Sequential`` of NumConvs x [Conv2d(in, out, 3, padding=1), ReLU] then MaxPool2d(2, 2)) and
``fc`` = Sequential(Flatten, Linear(F, H), ReLU, Dropout(p), Linear(H, H), ReLU, Dropout(p),
Linear(H, classes)), so ``state_dict()`` keys are ``vgg_block_1.0.weight``, ``vgg_block_3.2.bias``,
``fc.1.weight``, ``fc.4.weight``, ``fc.7.weight``, ...  Per config, in this order:
``torch.manual_seed(seed)``, build the model (torch's default init), ``x = torch.rand(N, C, H, W)``,
``labels = torch.randint(0, classes, (N,))``.  The model stays in eval mode throughout (dropout
is the identity); the loss is ``nn.CrossEntropyLoss()`` (mean over the batch).

Tensors in each file (F32 unless noted)
---------------------------------------
``param.<name>``   initial parameters (the whole state_dict)
``input``          [N, C, H, W];  ``labels`` I64 [N]
``logits``         [N, classes];  ``loss`` scalar, shape []
``grad.<name>``    d loss / d parameter at the initial parameters;  ``grad.input`` d loss / d input
``adam.<name>``    parameters after 3 steps of torch.optim.Adam (zero_grad, forward on the same
                   batch, loss, backward, step);  ``adam.losses`` [3]: the loss before each step
``sgd.<name>``     the same with torch.optim.SGD(momentum=0.9), from a fresh copy;  ``sgd.losses`` [3]
``__metadata__``   format "vgg-golden-1", config, architecture, hyper-parameters, torch version,
                   the command.

Exporting your own PyTorch VGG for vgg
--------------------------------------
vgg looks tensors up by the names above.  The D2L chapter's ``nn.Sequential`` VGG has keys
``{block}.{conv}.weight`` / ``{layer}.weight`` instead; ``tools/safetensors_torch.py`` renames
and writes them (no ``safetensors`` package needed)::

    import sys; sys.path.insert(0, "tools"); import safetensors_torch as st
    st.save_file(st.rename_d2l_sequential(model.net.state_dict()), "vgg11.safetensors",
                 metadata={"format": "pt"})

(``rename_d2l_sequential`` also accepts the ``net.``-prefixed keys of ``d2l.Classifier``;
materialise LazyLinear layers with one forward pass first.)  From a ``torch.save``'d state_dict:
``/usr/bin/python3 tools/safetensors_torch.py from-torch model.pt vgg11.safetensors --d2l``;
inspect any file with ``tools/safetensors_torch.py info FILE``.  A model already built with
our names (like ``GoldenVgg`` here) needs no renaming: ``st.save_file(model.state_dict(), path)``.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

try:
    import torch
    from torch import nn
except ImportError:
    sys.exit("make_golden.py: torch is not importable by " + sys.executable +
             "; run it with Debian's PyTorch: /usr/bin/python3 tools/make_golden.py")

import safetensors_torch as st  # noqa: E402

FORMAT = "vgg-golden-1"
COMMAND = "/usr/bin/python3 tools/make_golden.py"  # recorded verbatim; output dir does not matter
STEPS = 3
LOGITS_RTOL = 1e-5  # the tolerance tests/golden/README.md asks the C++ tests to use for logits and loss

CONFIGS: List[Dict] = [
    dict(name="vgg11_w16_32", input=(1, 32, 32),
         blocks=[(1, 1, 4), (1, 4, 8), (2, 8, 16), (2, 16, 32), (2, 32, 32)],
         hidden=256, classes=10, dropout=0.5, batch=4, seed=1,
         adam=dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
         sgd=dict(lr=0.05, momentum=0.9, nesterov=False, weight_decay=0.0)),
    dict(name="mixed_odd", input=(2, 15, 13),
         blocks=[(2, 2, 3), (1, 3, 4), (3, 4, 5)],
         hidden=6, classes=3, dropout=0.25, batch=3, seed=2,
         adam=dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-3),
         sgd=dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
]


class GoldenVgg(nn.Module):
    """The D2L VGG with vgg's attribute names (see the module docstring)."""

    def __init__(self, input_chw: Tuple[int, int, int], blocks, hidden: int, classes: int, dropout: float):
        super().__init__()
        c, h, w = input_chw
        self.num_blocks = len(blocks)
        for i, (num_convs, cin, cout) in enumerate(blocks, start=1):
            if cin != c:
                raise ValueError(f"block {i}: input channels {cin} != {c}")
            layers: List[nn.Module] = []
            for j in range(num_convs):
                layers += [nn.Conv2d(cin if j == 0 else cout, cout, kernel_size=3, padding=1), nn.ReLU()]
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            setattr(self, f"vgg_block_{i}", nn.Sequential(*layers))
            c, h, w = cout, h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(f"block {i}: the feature map vanished")
        self.feature_chw = (c, h, w)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(hidden, classes))

    def forward(self, x):
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"vgg_block_{i}")(x)
        return self.fc(x)


def architecture(cfg: Dict) -> str:
    parts = ["Input<{},{},{}>".format(*cfg["input"])]
    parts += ["VggBlock<{},{},{}>".format(*b) for b in cfg["blocks"]]
    parts.append(f"Classifier<{cfg['hidden']},{cfg['classes']},{cfg['dropout']!r}>")
    return " ".join(parts)


def build(cfg: Dict) -> GoldenVgg:
    return GoldenVgg(cfg["input"], cfg["blocks"], cfg["hidden"], cfg["classes"], cfg["dropout"])


def diagnose(cfg: Dict, model: GoldenVgg, x: torch.Tensor, logits: torch.Tensor) -> None:
    """Fail unless the case is non-degenerate: distinct logits, mostly live ReLUs, no max-pool ties."""
    relu_outputs: List[Tuple[str, torch.Tensor]] = []
    pool_inputs: List[Tuple[str, torch.Tensor]] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            hooks.append(module.register_forward_hook(lambda m, i, o, n=name: relu_outputs.append((n, o.detach()))))
        elif isinstance(module, nn.MaxPool2d):
            hooks.append(module.register_forward_hook(lambda m, i, o, n=name: pool_inputs.append((n, i[0].detach()))))
    with torch.no_grad():
        again = model(x)
    for h in hooks:
        h.remove()
    assert torch.equal(again, logits)

    problems = []
    spread = (logits - logits.mean(0)).abs().max().item()
    scale = logits.abs().max().item()
    print(f"  logits: max |logit| {scale:.4g}, max deviation across samples {spread:.4g} "
          f"({spread / scale:.2%}), argmax per sample {logits.argmax(1).tolist()}")
    # The C++ tests compare logits to LOGITS_RTOL; samples must differ by clearly more than that.
    if spread <= 5 * LOGITS_RTOL * scale:
        problems.append("logits are equal across samples to within 5x the logits tolerance")

    line = []
    live_units = total_units = 0
    for name, out in relu_outputs:
        # A unit is a conv channel or a linear feature; "active somewhere" = positive for some sample/pixel.
        units = out.transpose(0, 1).reshape(out.shape[1], -1)
        live = (units > 0).any(1).float().mean().item()
        frac = (out > 0).float().mean().item()
        live_units += int((units > 0).any(1).sum())
        total_units += units.shape[0]
        line.append(f"{name} {live:.0%} ({frac:.0%})")
        if live == 0:
            problems.append(f"ReLU {name}: no unit is ever active")
    print(f"  ReLU units active somewhere: {live_units}/{total_units}; per layer, units live "
          "(share of positive outputs): " + ", ".join(line))
    if live_units * 2 <= total_units:
        problems.append(f"only {live_units} of {total_units} ReLU units are ever active")

    # Max-pool ties: the gradient goes to the first maximum in row-major order of the 2x2 window.
    # Ties at 0 (all-dead windows after ReLU) are harmless: ReLU's derivative is 0 there anyway.
    ties = 0
    for name, inp in pool_inputs:
        n, c, h, w = inp.shape
        windows = inp[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
        windows = windows.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
        top = windows.max(-1, keepdim=True).values
        tied = ((windows == top).sum(-1) > 1) & (top.squeeze(-1) > 0)
        ties += int(tied.sum())
    print(f"  max-pool windows with a tied positive maximum: {ties}")
    if ties:
        problems.append(f"{ties} max-pool windows have tied positive maxima")
    if problems:
        raise SystemExit(f"make_golden.py: config {cfg['name']} is degenerate: " + "; ".join(problems))


def train(cfg: Dict, initial: Dict[str, torch.Tensor], x: torch.Tensor, labels: torch.Tensor,
          kind: str) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """-> (parameters after STEPS optimizer steps, the STEPS losses), in x's dtype."""
    model = build(cfg).to(x.dtype)
    model.load_state_dict(initial)
    model.eval()
    hp = cfg[kind]
    if kind == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], betas=hp["betas"], eps=hp["eps"],
                               weight_decay=hp["weight_decay"], foreach=False)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                              nesterov=hp["nesterov"], weight_decay=hp["weight_decay"], foreach=False)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(model(x), labels)
        losses.append(loss.detach().clone())
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, torch.stack(losses)


def compute(cfg: Dict, initial: Dict[str, torch.Tensor], x: torch.Tensor,
            labels: torch.Tensor) -> Dict[str, torch.Tensor]:
    """logits, loss, grad.*, adam.*, sgd.* for the given parameters and batch, in x's dtype."""
    model = build(cfg).to(x.dtype)
    model.load_state_dict(initial)
    model.eval()
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    loss = nn.CrossEntropyLoss()(logits, labels)
    loss.backward()
    out = {"logits": logits.detach().clone(), "loss": loss.detach().clone().reshape(())}
    for k, p in model.named_parameters():
        out[f"grad.{k}"] = p.grad.detach().clone()
    out["grad.input"] = xg.grad.detach().clone()
    for kind in ("adam", "sgd"):
        params, losses = train(cfg, initial, x, labels, kind)
        if not torch.equal(losses[0], out["loss"]):
            raise SystemExit(f"make_golden.py: {kind}'s first loss {losses[0].item()} != loss {loss.item()}")
        for k, v in params.items():
            out[f"{kind}.{k}"] = v
        out[f"{kind}.losses"] = losses
    return out


def rounding_report(f32: Dict[str, torch.Tensor], f64: Dict[str, torch.Tensor]) -> None:
    """How far the float32 goldens are from the same computation in float64, per group: a floor
    for the tolerances a float32 implementation can meet.  'tensor-rel' = max|d| / max|f64| per
    tensor; 'elem-rel' = max |d| / (|f64| + 1e-6 max|f64|) over the elements."""
    groups: Dict[str, List[Tuple[float, float]]] = {}
    for k, a in f32.items():
        b = f64[k]
        d = (a.double() - b).abs()
        scale = b.abs().max().item() or 1.0
        rel_t = d.max().item() / scale
        rel_e = (d / (b.abs() + 1e-6 * scale)).max().item()
        g = k.split(".")[0] if "." in k and k.split(".")[0] in ("grad", "adam", "sgd") else k
        groups.setdefault(g, []).append((rel_t, rel_e))
    print("  float32 vs float64 (tensor-rel / elem-rel): " + ", ".join(
        f"{g} {max(r[0] for r in v):.1e}/{max(r[1] for r in v):.1e}" for g, v in groups.items()))


def metadata(cfg: Dict) -> Dict[str, str]:
    a, s = cfg["adam"], cfg["sgd"]
    return {
        "format": FORMAT,
        "config": cfg["name"],
        "architecture": architecture(cfg),
        "batch_size": str(cfg["batch"]),
        "seed": str(cfg["seed"]),
        "dtype": "F32",
        "mode": "eval (dropout off)",
        "loss": "nn.CrossEntropyLoss() mean over the batch",
        "order": "manual_seed(seed); model init (torch defaults); input=rand(N,C,H,W); "
                 "labels=randint(0,classes,(N,))",
        "steps": str(STEPS),
        "adam": f"torch.optim.Adam(lr={a['lr']!r}, betas={a['betas']!r}, eps={a['eps']!r}, "
                f"weight_decay={a['weight_decay']!r}, amsgrad=False)",
        "adam.lr": repr(a["lr"]),
        "adam.betas": f"{a['betas'][0]!r},{a['betas'][1]!r}",
        "adam.eps": repr(a["eps"]),
        "adam.weight_decay": repr(a["weight_decay"]),
        "sgd": f"torch.optim.SGD(lr={s['lr']!r}, momentum={s['momentum']!r}, dampening=0, "
               f"nesterov={s['nesterov']!r}, weight_decay={s['weight_decay']!r})",
        "sgd.lr": repr(s["lr"]),
        "sgd.momentum": repr(s["momentum"]),
        "sgd.nesterov": "true" if s["nesterov"] else "false",
        "sgd.weight_decay": repr(s["weight_decay"]),
        "torch_version": torch.__version__,
        "command": COMMAND,
    }


def generate(cfg: Dict, out_dir: str) -> str:
    print(f"{cfg['name']}: {architecture(cfg)}, batch {cfg['batch']}, seed {cfg['seed']}")
    torch.manual_seed(cfg["seed"])
    model = build(cfg)
    c, h, w = cfg["input"]
    x = torch.rand(cfg["batch"], c, h, w, dtype=torch.float32)
    labels = torch.randint(0, cfg["classes"], (cfg["batch"],), dtype=torch.int64)
    model.eval()
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        diagnose(cfg, model, x, model(x))

    results = compute(cfg, initial, x, labels)
    tensors: Dict[str, torch.Tensor] = {f"param.{k}": v for k, v in initial.items()}
    tensors.update(input=x, labels=labels)
    tensors.update(results)

    print(f"  labels {labels.tolist()}, loss {results['loss'].item():.9g}")
    grads = {k: v for k, v in results.items() if k.startswith("grad.")}
    zero = sum(int((g == 0).sum()) for k, g in grads.items() if k != "grad.input")
    count = sum(g.numel() for k, g in grads.items() if k != "grad.input")
    tiny = sum(int(((g != 0) & (g.abs() < 1e-7)).sum()) for k, g in grads.items() if k != "grad.input")
    print(f"  parameter gradients: {zero} of {count} exactly zero (dead units), {tiny} nonzero below 1e-7; "
          f"max |grad.input| {grads['grad.input'].abs().max().item():.2g}")
    for kind in ("adam", "sgd"):
        print(f"  {kind} losses " + ", ".join(f"{v:.9g}" for v in results[f"{kind}.losses"].tolist()))
    rounding_report(results, compute(cfg, {k: v.double() for k, v in initial.items()}, x.double(), labels))

    path = os.path.join(out_dir, cfg["name"] + ".safetensors")
    st.save_file(tensors, path, metadata=metadata(cfg))
    back = st.load_file(path)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors), "round trip"
    assert st.read_metadata(path) == metadata(cfg)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "golden"), help="output directory")
    parser.add_argument("--check", action="store_true",
                        help="write to a temporary directory and compare byte-for-byte with --out")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False  # plain ATen kernels: fewer code paths, same on every CPU

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            paths = [generate(cfg, tmp) for cfg in CONFIGS]
            bad = [os.path.basename(p) for p in paths
                   if not filecmp.cmp(p, os.path.join(args.out, os.path.basename(p)), shallow=False)]
        if bad:
            print(f"make_golden.py: differs from {args.out}: {', '.join(bad)}", file=sys.stderr)
            return 1
        print(f"make_golden.py: {args.out} is up to date (byte-identical)")
        return 0

    os.makedirs(args.out, exist_ok=True)
    total = 0
    for cfg in CONFIGS:
        path = generate(cfg, args.out)
        size = os.path.getsize(path)
        total += size
        print(f"  wrote {os.path.relpath(path)} ({size} bytes)")
    print(f"total {total} bytes ({total / 2**20:.2f} MiB)")
    if total >= 2_000_000:
        print("make_golden.py: warning: golden files exceed 2 MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
