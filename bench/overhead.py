"""Per-step costs, timed side by side (interleaved medians): an attack iteration against a bare
forward+backward, the converted graph against the native torch model, the QP inside an
ML-DeepFool step, and the Jacobian modes."""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxattack.zoo.build import build
from onnxattack.zoo.sample_inputs import test_inputs
from torch import nn

from onnxattack.attacks import MLCarliniWagner, MLDeepFool
from onnxattack.attacks import ml_deepfool as deepfool_module
from onnxattack.attacks._search import _iterate, _start
from onnxattack.attacks.jacobian import scores_and_jacobian
from onnxattack.loader import LoadedModel, load
from onnxattack.scores import ThresholdCriterion
from onnxattack.targets import make_targets, parse_target


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None],
                statistic: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """Median (or `statistic`) seconds per case, cases alternating inside each repeat so drift hits all alike.
    The per-step ratios use the fastest repeat (min): on a shared machine other jobs' stalls only ever add
    time, and a median of 15 is still moved by them under a load of 4-8 on 2 cores."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in cases.items():
            sync()
            started = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - started)
    return {name: statistic(values) for name, values in times.items()}


def syncer(model: LoadedModel) -> Callable[[], None]:
    return torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)


def _mosaic(device: str, batch: int, memory_format: str = "auto") -> tuple[LoadedModel, torch.Tensor]:
    model = load(build("digits-mosaic").path, device=device, memory_format=memory_format)
    return model, model.as_tensor(test_inputs("digits-mosaic", batch))


def _forward_backward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, inner: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(inner):
            leaf = x.detach().requires_grad_(True)
            torch.autograd.grad(fn(leaf).sum(), leaf)
    return run


def step_overhead(device: str, batch: int = 32, repeats: int = 15, inner: int = 20) -> dict:
    """One ML-CW iteration (Adam, bookkeeping, criterion) / one forward+backward of the same graph."""
    model, x = _mosaic(device, batch)
    victim = model.victim()
    criterion = ThresholdCriterion(threshold=model.reader.threshold)
    clean = model.ort_scores(x.cpu().numpy())
    target = torch.as_tensor(make_targets(parse_target("hide-single", model.labels), criterion.predict(clean),
                                          clean, 0), device=model.device)
    in_space = criterion.in_attack_space(model.reader)
    settings = MLCarliniWagner().settings()
    calls = torch.zeros(batch, dtype=torch.long, device=model.device)
    state = _start(x, target, settings, *victim.box, calls)
    wanted = in_space.margin

    def term(scores: torch.Tensor, goal: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (wanted - in_space.label_margins(scores, goal)).clamp_min(0).sum(dim=1)

    def iterations() -> None:
        for _ in range(inner):
            _iterate(state, victim, term, in_space, settings, batch)

    medians = interleaved({"fwd+bwd": _forward_backward(victim.attack_space, x, inner), "iteration": iterations},
                          repeats, syncer(model), statistic=min)
    return {"ratio": medians["iteration"] / medians["fwd+bwd"], "batch": batch,
            "iteration_ms": medians["iteration"] / inner * 1e3, "fwd_bwd_ms": medians["fwd+bwd"] / inner * 1e3}


def native_mosaic(path: Path) -> nn.Module:
    """The zoo's CellMaxCNN rebuilt natively from the ONNX weights (BatchNorm folded into the convs,
    as in the export), without the final Sigmoid: the same function as the converted graph."""
    proto = onnx.load(path)
    weights = {init.name: torch.from_numpy(onnx.numpy_helper.to_array(init).copy()) for init in proto.graph.initializer}
    kernels = [name for name in weights if weights[name].dim() == 4]
    layers: list[nn.Module] = []
    for number, name in enumerate(kernels):
        kernel = weights[name]
        conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], kernel.shape[2], padding=kernel.shape[2] // 2)
        bias = weights.get(f"{name}_bias", weights.get(name.replace("weight", "bias")))
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias if bias is not None else torch.zeros(kernel.shape[0]))
        layers.append(conv)
        if number < len(kernels) - 1:
            layers.append(nn.ReLU())
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.Flatten())
    return nn.Sequential(*layers).eval()


class RecurrentTagger(nn.Module):
    """A GRU over [frames, features] with a linear head on its last state (a small audio tagger)."""

    def __init__(self, features: int = 16, hidden: int = 32, labels: int = 20) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class AttentionTagger(nn.Module):
    """One pre-norm-free transformer block (multi-head attention, LayerNorm, GELU MLP) over [tokens, features]."""

    def __init__(self, features: int = 16, width: int = 32, labels: int = 20) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.attention = nn.MultiheadAttention(width, 4, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 64), nn.GELU(), nn.Linear(64, width))
        self.head = nn.Linear(width, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attention(h, h, h, need_weights=False)
        h = self.norm(h + a)
        h = h + self.mlp(h)
        return self.head(h.mean(dim=1))


def _exported_sequence_model(folder: Path, net: nn.Module, name: str, frames: int = 12, features: int = 16) -> Path:
    path = folder / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Sequential(net, nn.Sigmoid()).eval(), (torch.rand(2, frames, features),), str(path),
                          input_names=["x"], output_names=["p"], dynamic_axes={"x": {0: "n"}, "p": {0: "n"}},
                          dynamo=False)
    return path


def _graph_case(model: LoadedModel, native: nn.Module, x: torch.Tensor, repeats: int, inner: int) -> dict:
    with torch.no_grad():
        agree = float((native(x) - model.attack_logits(x)).abs().max())
    medians = interleaved({"native": _forward_backward(native, x, inner),
                           "converted": _forward_backward(model.attack_logits, x, inner)}, repeats, syncer(model),
                          statistic=min)
    graph = model.graph
    return {"ratio": medians["converted"] / medians["native"], "max_abs_difference": agree,
            "native_ms": medians["native"] / inner * 1e3, "converted_ms": medians["converted"] / inner * 1e3,
            "trace": getattr(graph, "status", "not traceable")}


def graph_overhead(device: str, batch: int = 32, repeats: int = 15, inner: int = 20) -> dict:
    """Converted graph / native torch module, fwd+bwd on the same batch (interleaved medians): the zoo CNN, a
    GRU tagger and an attention tagger (exported here with seeded random weights). Like for like: the
    converted CNN in the native module's contiguous layout (layout_speedup measures channels-last)."""
    model, x = _mosaic(device, batch, "contiguous")
    native = native_mosaic(model.info.path).to(model.device)
    cases = {"digits-mosaic": _graph_case(model, native, x, repeats, inner)}
    with tempfile.TemporaryDirectory() as folder:
        for name, cls in (("gru-tagger", RecurrentTagger), ("attention-tagger", AttentionTagger)):
            torch.manual_seed(0)
            net = cls().eval()
            loaded = load(_exported_sequence_model(Path(folder), net, name), device=device)
            sequence = torch.rand(batch, 12, 16, generator=torch.Generator().manual_seed(0)).to(loaded.device)
            cases[name] = _graph_case(loaded, net.to(loaded.device), sequence, repeats, inner)
    return {"ratio": {name: case["ratio"] for name, case in cases.items()}, "batch": batch, "cases": cases}


def layout_speedup(device: str, batch: int = 32, repeats: int = 15, inner: int = 20) -> dict:
    """The converted zoo CNN's fwd+bwd contiguous / channels-last (bridge/layout.py), interleaved, and
    what --memory-format auto chose for it on this machine."""
    contiguous, x = _mosaic(device, batch, "contiguous")
    fast, _ = _mosaic(device, batch, "channels-last")
    chosen, _ = _mosaic(device, batch)
    best = interleaved({"contiguous": _forward_backward(contiguous.attack_logits, x, inner),
                        "channels-last": _forward_backward(fast.attack_logits, x, inner)}, repeats, syncer(fast),
                       statistic=min)
    return {"ratio": best["contiguous"] / best["channels-last"], "auto": chosen.memory_format, "batch": batch,
            "contiguous_ms": best["contiguous"] / inner * 1e3, "channels_last_ms": best["channels-last"] / inner * 1e3}


def _wide_model(folder: Path, labels: int, seed: int = 0) -> Path:
    """A small CNN on 1x16x16 inputs (the zoo mosaic's size) with `labels` sigmoid outputs, exported to ONNX."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(32 * 16, 128), nn.ReLU(), nn.Linear(128, labels), nn.Sigmoid()).eval()
    path = folder / f"mlp{labels}.onnx"
    torch.onnx.export(net, (torch.rand(2, 1, 16, 16),), str(path), input_names=["x"], output_names=["p"],
                      dynamic_axes={"x": {0: "n"}, "p": {0: "n"}}, dynamo=False)
    return path


def qp_share(device: str, labels: int = 80, batch: int = 32, flips: int = 8, max_iter: int = 20) -> dict:
    """Time inside the dual QP / time of the whole ML-DeepFool run, at L labels; with the label
    subset (default) and with every label (near=inf)."""
    with tempfile.TemporaryDirectory() as folder:
        model = load(_wide_model(Path(folder), labels), device=device)
        rng = np.random.default_rng(0)
        x_np = rng.uniform(0.2, 0.8, size=(batch, 1, 16, 16)).astype(np.float32)
        criterion = ThresholdCriterion(threshold=0.5)
        predicted = criterion.predict(model.ort_scores(x_np))
        target = predicted.copy()
        for row in target:
            flip = rng.choice(labels, size=flips, replace=False)
            row[flip] = 1 - row[flip]
        x, goal = model.as_tensor(x_np), torch.as_tensor(target, device=model.device)
        sync = syncer(model)
        original = deepfool_module.solve_nonnegative_qp
        out = {}
        for name, near in (("subset", 1.0), ("all_labels", float("inf"))):
            spent = [0.0]

            def timed(q: torch.Tensor, b: torch.Tensor, spent: list[float] = spent) -> torch.Tensor:
                sync()
                started = time.perf_counter()
                lam = original(q, b)
                sync()
                spent[0] += time.perf_counter() - started
                return lam

            deepfool_module.solve_nonnegative_qp = timed  # type: ignore[assignment]
            try:
                attack = MLDeepFool(max_iter=max_iter, near=near)
                attack(model.victim(), x, goal, criterion)  # warm-up
                spent[0] = 0.0
                sync()
                started = time.perf_counter()
                result = attack(model.victim(), x, goal, criterion)
                sync()
                total = time.perf_counter() - started
            finally:
                deepfool_module.solve_nonnegative_qp = original  # type: ignore[assignment]
            out[name] = {"share": spent[0] / total, "success": float(result.success.float().mean()),
                         "mean_calls": float(result.model_calls.float().mean()), "seconds": round(total, 3)}
    return {"labels": labels, "batch": batch, **out}


def jacobian_modes(device: str, batch: int = 32, repeats: int = 7) -> dict:
    """All-label Jacobian: one vectorised backward vs L backward passes vs the replicated batch."""
    model, x = _mosaic(device, batch)
    fn = model.victim().attack_space
    medians = interleaved({mode: (lambda mode=mode: scores_and_jacobian(fn, x, mode))
                           for mode in ("loop", "batched-grads", "replicated")}, repeats, syncer(model))
    return {"batch": batch, "labels": model.num_labels, "loop_ms": medians["loop"] * 1e3,
            "batched_over_loop": medians["batched-grads"] / medians["loop"],
            "replicated_over_loop": medians["replicated"] / medians["loop"]}
