"""Parity of retrain-inception with torchvision's Inception-v3 (run by scripts/inception-parity.sh).

Weights are not stored anywhere: every parameter is filled from a counter-based generator of
(parameter name, element index) that crates/retrain-inception/src/counter.rs implements
identically (FNV-1a of the name, splitmix64 of name hash + (index + 1)·φ, top 53 bits → [0, 1),
scaled to a per-parameter range in f64, rounded to f32 once). Inputs come from the same generator.

  generate OUT WORK   writes OUT/inception_v3_keys.txt, OUT/parity.safetensors (reference logits,
                      features and gradients), OUT/small.pth (a few tensors saved by torch.save),
                      and in WORK the full weights as .pth and .safetensors and the inputs.
  bench SIZE BATCH ITERS [train] [--threads N]
                      times torchvision (on N threads, 2 by default) as `retrain-inception bench`
                      does and prints `images_per_sec=X`.
  check WORK          compares the Rust binary's outputs in WORK with torchvision, including
                      loading the safetensors that Rust wrote (10 classes) into torchvision and
                      timm (strict).
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from safetensors.torch import load_file, save_file

MASK = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x00000100000001B3
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def name_hash(name: str) -> int:
    h = FNV_OFFSET
    for b in name.encode():
        h = ((h ^ b) * FNV_PRIME) & MASK
    return h


def uniform(name: str, n: int, lo: float, hi: float) -> np.ndarray:
    base = np.uint64(name_hash(name))
    with np.errstate(over="ignore"):
        z = base + np.arange(1, n + 1, dtype=np.uint64) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    r = (z >> np.uint64(11)).astype(np.float64) * (1.0 / float(1 << 53))
    return (lo + (hi - lo) * r).astype(np.float32)


def parity_range(name: str, shape) -> tuple:
    fan_in = max(1, int(np.prod(shape[1:])) if len(shape) > 1 else 1)
    if name.endswith("bn.weight"):
        return 0.8, 1.2
    if name.endswith("bn.bias") or name.endswith("running_mean"):
        return -0.1, 0.1
    if name.endswith("running_var"):
        return 0.5, 1.5
    if name.endswith("conv.weight"):
        b = (6.0 / fan_in) ** 0.5
        return -b, b
    if name.endswith("fc.weight"):
        b = (3.0 / fan_in) ** 0.5
        return -b, b
    return -0.1, 0.1


def tensor(name: str, shape, lo=None, hi=None) -> torch.Tensor:
    if lo is None:
        lo, hi = parity_range(name, shape)
    n = int(np.prod(shape)) if len(shape) else 1
    return torch.from_numpy(uniform(name, n, lo, hi).reshape(shape))


def model(num_classes: int, aux_logits: bool = True, dropout: float = 0.5):
    return torchvision.models.inception_v3(
        weights=None,
        num_classes=num_classes,
        aux_logits=aux_logits,
        transform_input=False,
        init_weights=False,
        dropout=dropout,
    )


def parity_state(m) -> dict:
    state = {}
    for name, t in m.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)
        else:
            state[name] = tensor(name, tuple(t.shape))
    return state


def inputs():
    return {
        "input.299": tensor("input.299", (1, 3, 299, 299), -1.0, 1.0),
        "input.75": tensor("input.75", (2, 3, 75, 75), -1.0, 1.0),
        "input.107": tensor("input.107", (2, 3, 107, 107), -1.0, 1.0),
    }


def features_of(m, x):
    out = {}
    hook = m.avgpool.register_forward_hook(lambda mod, i, o: out.setdefault("f", o.flatten(1)))
    logits = m(x)
    hook.remove()
    return logits, out["f"]


GRAD_PARAMS = ["Conv2d_1a_3x3.conv.weight", "Mixed_6b.branch7x7_2.conv.weight", "fc.weight"]


def generate(out: Path, work: Path) -> None:
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    x = inputs()

    m1000 = model(1000).eval()
    with open(out / "inception_v3_keys.txt", "w") as f:
        for name, t in m1000.state_dict().items():
            f.write(f"{name}\t{list(t.shape)}\n")
    state1000 = parity_state(m1000)
    m1000.load_state_dict(state1000, strict=True)
    torch.save(state1000, work / "parity1000.pth")
    save_file({k: v.contiguous() for k, v in state1000.items()}, work / "parity1000.safetensors")
    save_file({"input": x["input.299"]}, work / "input299.safetensors")
    save_file({"input": x["input.75"]}, work / "input75.safetensors")

    refs = {}
    with torch.no_grad():
        refs["eval299.logits"] = m1000(x["input.299"])

    m10 = model(10).eval()
    state10 = parity_state(m10)
    m10.load_state_dict(state10, strict=True)
    save_file({k: v.contiguous() for k, v in state10.items()}, work / "parity10.safetensors")
    with torch.no_grad():
        logits, feats = features_of(m10, x["input.75"])
    refs["eval75.logits"] = logits
    refs["eval75.features"] = feats

    # One training step at 107×107 (Mixed_7c is 2×2 there: at 75×75 it is 1×1 and batch norm over
    # two values per channel is too ill-conditioned to compare in f32): batch statistics, no
    # dropout, no aux head (it needs 299×299).
    # The gradients are ill-conditioned in f32 (batch statistics over few values deep in the
    # network): PyTorch's own f32 gradients differ from its f64 ones by up to ~0.5 % here. The
    # reference is therefore computed in f64; Rust checks its f64 model tightly against it.
    state_t = {k: v for k, v in state10.items() if not k.startswith("AuxLogits.")}
    loss_w = tensor("loss.weight", (2, 10), -1.0, 1.0)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        mt = model(10, aux_logits=False, dropout=0.0).train()
        mt.load_state_dict(state_t, strict=True)
        mt = mt.to(dtype)
        logits = mt(x["input.107"].to(dtype))
        loss = (logits * loss_w.to(dtype)).sum()
        loss.backward()
        params = dict(mt.named_parameters())
        grads[dtype] = {name: params[name].grad.double() for name in GRAD_PARAMS}
    refs["train107.logits"] = logits.detach()
    refs["train107.loss"] = loss.detach().reshape(1)
    for name in GRAD_PARAMS:
        ref = grads[torch.float64][name]
        refs[f"grad.{name}"] = ref
        err = ((grads[torch.float32][name] - ref).abs().max() / ref.abs().max()).reshape(1)
        refs[f"grad_f32_error.{name}"] = err
    refs["train107.running_mean.Conv2d_1a_3x3"] = mt.Conv2d_1a_3x3.bn.running_mean.detach()
    refs["train107.running_var.Conv2d_1a_3x3"] = mt.Conv2d_1a_3x3.bn.running_var.detach()

    # The same loss with frozen batch norm (eval mode, running statistics), as when fine-tuning
    # with batch norm frozen. Without batch statistics the gradients are well conditioned, so
    # f32 can be held to PyTorch's f64 tightly (PyTorch's own f32 is within ~1e-6 here).
    grads = {}
    for dtype in (torch.float32, torch.float64):
        me = model(10, aux_logits=False, dropout=0.0).eval()
        me.load_state_dict(state_t, strict=True)
        me = me.to(dtype)
        loss = (me(x["input.107"].to(dtype)) * loss_w.to(dtype)).sum()
        loss.backward()
        params = dict(me.named_parameters())
        grads[dtype] = {name: params[name].grad.double() for name in GRAD_PARAMS}
    for name in GRAD_PARAMS:
        ref = grads[torch.float64][name]
        refs[f"grad_eval.{name}"] = ref
        err = ((grads[torch.float32][name] - ref).abs().max() / ref.abs().max()).reshape(1)
        refs[f"grad_eval_f32_error.{name}"] = err
    save_file({k: v.contiguous() for k, v in refs.items()}, out / "parity.safetensors")

    # A small PyTorch zip checkpoint for the .pth reader test.
    small = {
        name: state10[name]
        for name in ["Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "fc.bias"]
    }
    small["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.long)
    torch.save(small, out / "small.pth")
    for k, v in refs.items():
        print(f"{k}: shape {list(v.shape)}, max |v| {v.abs().max().item():.4g}")


def max_abs(a, b) -> float:
    return (a - b).abs().max().item()


def check(work: Path) -> None:
    torch.set_num_threads(2)
    x = inputs()
    failures = 0

    def report(what, delta, tol):
        nonlocal failures
        ok = delta <= tol
        failures += not ok
        print(f"{what}: max |Δ| = {delta:.3g} ({'ok' if ok else 'FAIL'}, tolerance {tol:g})")

    m1000 = model(1000).eval()
    m1000.load_state_dict(parity_state(m1000), strict=True)
    with torch.no_grad():
        want = m1000(x["input.299"])
    got = load_file(work / "out_pth299.safetensors")["logits"]
    report("full-model .pth → Rust logits vs torchvision, 299×299", max_abs(got, want), 1e-4)

    # Rust re-headed the 1000-class .pth to 10 classes and wrote safetensors: load it strictly.
    m10 = model(10).eval()
    m10.load_state_dict(load_file(work / "rust10.safetensors"), strict=True)
    with torch.no_grad():
        want = m10(x["input.75"])
    got = load_file(work / "out_rust10_75.safetensors")["logits"]
    report("Rust-written safetensors loaded by torchvision, 75×75", max_abs(got, want), 1e-4)

    import timm

    mt = timm.create_model("inception_v3", num_classes=10, aux_logits=True, pretrained=False).eval()
    mt.load_state_dict(load_file(work / "rust10.safetensors"), strict=True)
    # timm runs its aux head in eval mode too, which needs 299×299.
    got = load_file(work / "out_rust10_299.safetensors")["logits"]
    with torch.no_grad():
        out = mt(x["input.299"])
    want = out[0] if isinstance(out, tuple) else out
    report("Rust-written safetensors loaded by timm, 299×299", max_abs(got, want), 1e-4)
    if failures:
        sys.exit(1)


def bench(size: int, batch: int, steps: int, train: bool, threads: int) -> None:
    """What `retrain-inception bench --size S --batch B --mode forward|train --steps N` does, with
    torchvision's model: eval forward passes without gradients, or full training steps (aux head
    weighted 0.4 where the size allows, cross-entropy, backward, plain SGD lr 0.01), on `threads`
    threads, timed over `steps` after one warm-up. Prints `images_per_sec=X`."""
    import time

    torch.set_num_threads(threads)
    m = model(1000, aux_logits=size >= 299)
    m.train(train)
    x = torch.rand(batch, 3, size, size) * 2 - 1
    targets = torch.arange(batch) % 1000
    sgd = torch.optim.SGD(m.parameters(), lr=0.01)

    def step():
        if train:
            out = m(x)
            logits, aux = (out.logits, out.aux_logits) if size >= 299 else (out, None)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            if aux is not None:
                loss = loss + 0.4 * torch.nn.functional.cross_entropy(aux, targets)
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            sgd.step()
        else:
            with torch.no_grad():
                m(x)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    print(f"images_per_sec={batch * steps / seconds:.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "generate":
        generate(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) in range(5, 9) and sys.argv[1] == "bench":
        rest, threads = sys.argv[5:], 2
        if rest[-2:-1] == ["--threads"]:
            rest, threads = rest[:-2], int(rest[-1])
        if rest not in ([], ["train"]) or threads < 1:
            sys.exit(__doc__)
        bench(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), rest == ["train"], threads)
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
