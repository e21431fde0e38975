"""Train, export and measure the zoo's models. `python -m model_zoo.build [NAME ...]`."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from . import data
from .models import MosaicCNN, TabularMLP, pairwise_ranking_loss
from .registry import MODELS, ZooModel, model_path, zoo_dir


@dataclass(frozen=True)
class Built:
    path: Path
    metrics: dict[str, float]


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, loss_fn: Callable, epochs: int,
          lr: float = 2e-3, batch_size: int = 64, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y).float()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_t), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            optimiser.zero_grad()
            loss_fn(net(x_t[index]), y_t[index]).backward()
            optimiser.step()
    return net.eval()


def classifier_metrics(probabilities_or_logits: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    predicted = (probabilities_or_logits > threshold).astype(np.int8)
    return {"exact_match": float(np.mean(np.all(predicted == y, axis=1))),
            "hamming_loss": float(np.mean(predicted != y))}


def ranker_metrics(scores: np.ndarray, y: np.ndarray, k: int) -> dict:
    positive = y.astype(bool)
    misordered = (scores[:, :, None] <= scores[:, None, :]) & positive[:, :, None] & ~positive[:, None, :]
    pairs = positive.sum(1) * (~positive).sum(1)
    top = np.argsort(-scores, axis=1)[:, :k]
    top_mask = np.zeros_like(positive)
    np.put_along_axis(top_mask, top, True, axis=1)
    return {"ranking_loss": float(np.mean(misordered.sum((1, 2)) / np.maximum(pairs, 1))),
            "top_k_exact_match": float(np.mean(np.all(top_mask == positive, axis=1)))}


def export(net: nn.Module, sample: np.ndarray, path: Path, labels: list[str], spec: ZooModel,
           dynamo: bool, opset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(sample[:2])
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(net, (example,), str(tmp), dynamo=True, opset_version=opset,
                              input_names=["input"], output_names=["scores"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        else:
            torch.onnx.export(net, (example,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["scores"],
                              dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}})
    model = onnx.load(str(tmp))
    metadata = {"labels": json.dumps(labels), "onnxattack.zoo": spec.name, "task": spec.task,
                "input_range": json.dumps(list(spec.input_range))}
    if spec.top_k:
        metadata["top_k"] = str(spec.top_k)
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(tmp))
    tmp.replace(path)  # a half-written model never takes the final name


def _scores(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def build_digits_mosaic(spec: ZooModel, path: Path) -> dict:
    split = data.digit_mosaics()
    torch.manual_seed(0)
    net = train(MosaicCNN(head="sigmoid"), split.x_train, split.y_train, nn.BCEWithLogitsLoss(), epochs=8)
    export(net, split.x_test, path, split.labels, spec, dynamo=True, opset=18)
    return classifier_metrics(_scores(net, split.x_test), split.y_test, 0.5)


def build_digits_ranker(spec: ZooModel, path: Path) -> dict:
    split = data.digit_mosaics(digits_per_mosaic=(3, 3), seed=1)
    torch.manual_seed(0)
    net = train(MosaicCNN(head=None), split.x_train, split.y_train, pairwise_ranking_loss, epochs=8)
    export(net, split.x_test, path, split.labels, spec, dynamo=False, opset=13)
    return ranker_metrics(_scores(net, split.x_test), split.y_test, spec.top_k or 3)


def build_yeast_mlp(spec: ZooModel, path: Path) -> dict:
    split = data.yeast()
    mean = torch.from_numpy(split.x_train.mean(0))
    std = torch.from_numpy(split.x_train.std(0) + 1e-6)
    torch.manual_seed(0)
    net = train(TabularMLP(mean, std, split.y_train.shape[1]), split.x_train, split.y_train,
                nn.BCEWithLogitsLoss(), epochs=30, lr=1e-3)
    export(net, split.x_test, path, split.labels, spec, dynamo=False, opset=17)
    return classifier_metrics(_scores(net, split.x_test), split.y_test, 0.0)


BUILDERS: dict[str, Callable[[ZooModel, Path], dict]] = {
    "digits-mosaic": build_digits_mosaic,
    "digits-ranker": build_digits_ranker,
    "yeast-mlp": build_yeast_mlp,
}


def build(name: str, directory: Path | None = None, force: bool = False) -> Built:
    """Build one zoo model (skipped when its file exists, unless force) and return its clean metrics."""
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r} (known: {', '.join(MODELS)})")
    path = model_path(name, directory)
    metrics_path = path.with_suffix(".metrics.json")
    if path.exists() and metrics_path.exists() and not force:
        return Built(path, json.loads(metrics_path.read_text()))
    metrics = BUILDERS[name](MODELS[name], path)
    metrics_path.write_text(json.dumps(metrics, indent=2))
    return Built(path, metrics)


def main(argv: list[str]) -> int:
    for name in argv or list(MODELS):
        built = build(name, zoo_dir())
        print(name, built.path, json.dumps(built.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
