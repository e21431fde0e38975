"""Models the size real packages ship, attacked end to end: seconds and model calls per input.

    python -m bench.large_inputs [--count 8] [--device cpu]

- `tagger`: a CNN on [1, 187, 96] log-mel-like inputs with 50 sigmoid labels (an audio tagger's shape);
- `pitch`: a 360-bin model whose labels are coupled to their neighbours (a pitch estimator's shape: a
  1-D CNN on 1024 samples, 360 logits smoothed over neighbouring bins, sigmoid).
Both are built here with seeded random weights and exported to ONNX; every verdict is onnxruntime's.
Methods: ml-cw (max_iter 200, as the issue's figure), ml-deepfool and ml-pgd at their defaults,
target hide-single. 8 inputs by default: with fewer, a search soon runs a single row, which is not the
batch of a real run.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from onnxattack import MLPGD, MLCarliniWagner, MLDeepFool, attack_arrays, load


class Tagger(nn.Module):
    def __init__(self, labels: int = 50) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.features(x)) * 4)


class Pitch(nn.Module):
    def __init__(self, bins: int = 360) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 64, stride=4, padding=30), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 64, 16, padding=8), nn.ReLU(), nn.MaxPool1d(4), nn.Flatten())
        self.logits = nn.LazyLinear(bins)
        self.coupling = nn.Conv1d(1, 1, 9, padding=4, bias=False)  # each bin leans on its 8 neighbours
        with torch.no_grad():
            self.coupling.weight.copy_(torch.hann_window(11)[1:-1].reshape(1, 1, 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(self.features(x))
        return torch.sigmoid(self.coupling(z.unsqueeze(1)).squeeze(1) * 3)


def _export(net: nn.Module, sample: torch.Tensor, path: Path) -> Path:
    net.eval()
    with torch.no_grad():
        net(sample)  # materialise lazy layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (sample,), str(path), input_names=["x"], output_names=["p"],
                          dynamic_axes={"x": {0: "n"}, "p": {0: "n"}}, dynamo=False)
    return path


MODELS = {"tagger-187x96-50": (Tagger, (1, 187, 96)), "pitch-1024-360": (Pitch, (1, 1024))}
METHODS = {"ml-cw": lambda: MLCarliniWagner(max_iter=200), "ml-deepfool": MLDeepFool, "ml-pgd": MLPGD}


def measure(count: int = 8, device: str = "cpu") -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (cls, shape) in MODELS.items():
            torch.manual_seed(0)
            path = _export(cls(), torch.rand(2, *shape), Path(folder) / f"{name}.onnx")
            started = time.perf_counter()
            model = load(path, device=device)
            load_s = time.perf_counter() - started
            x = np.random.default_rng(0).uniform(0, 1, size=(count, *shape)).astype(np.float32)
            case: dict = {"load_s": round(load_s, 2), "rows": count}
            for method, make in METHODS.items():
                started = time.perf_counter()
                result = attack_arrays(model, x, make(), target="hide-single")
                seconds = time.perf_counter() - started
                attacked = result.attacked
                case[method] = {"seconds_per_input": round(seconds / count, 2),
                                "calls_per_input": float(result.model_calls[attacked].mean()) if attacked.any() else 0,
                                "success": float(result.success[attacked].mean()) if attacked.any() else None,
                                "mean_l2": float(result.l2[attacked & result.success].mean())
                                if (attacked & result.success).any() else None}
            case["trace"] = getattr(model.graph, "status", "not traceable")
            case["memory_format"] = model.memory_format
            out[name] = case
    return out


@click.command()
@click.option("--count", type=int, default=8, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def main(count: int, device: str) -> None:
    click.echo(json.dumps(measure(count, device), indent=1))


if __name__ == "__main__":
    main()
