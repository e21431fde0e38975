"""Train, export and measure the zoo's models. `python -m model_zoo.build [--force] [NAME ...]`."""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from . import data, text
from .models import CellMaxCNN, MosaicCNN, TabularMLP, TopicTagger, pairwise_ranking_loss
from .registry import MODELS, ZooModel, model_path, zoo_dir


@dataclass(frozen=True)
class Built:
    path: Path
    metrics: dict[str, float]


def train(net: nn.Module, x: np.ndarray | tuple[np.ndarray, ...], y: np.ndarray, loss_fn: Callable, epochs: int,
          lr: float = 2e-3, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Adam on shuffled mini-batches; x is one array or a tuple of arrays (the net's inputs, row-aligned)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = tuple(torch.from_numpy(a) for a in (x if isinstance(x, tuple) else (x,)))
    y_t = torch.from_numpy(y).float()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_t), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            optimiser.zero_grad()
            loss_fn(net(*(tensor[index] for tensor in inputs)), y_t[index]).backward()
            optimiser.step()
    return net.eval()


def train_on_fresh_mosaics(net: nn.Module, source: data.DigitImages, epochs: int, per_epoch: int,
                           lr: float = 5e-3, batch_size: int = 256, seed: int = 0) -> nn.Module:
    """BCE on new random mosaics every epoch (no mosaic seen twice), AdamW with a one-cycle schedule."""
    rng = np.random.default_rng(seed)
    steps_per_epoch = per_epoch // batch_size
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * steps_per_epoch)
    loss_fn = nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(epochs):
        x, y = (torch.from_numpy(a) for a in data.random_mosaics(source, per_epoch, rng))
        for step in range(steps_per_epoch):
            batch = slice(step * batch_size, (step + 1) * batch_size)
            optimiser.zero_grad()
            loss_fn(net(x[batch]), y[batch].float()).backward()
            optimiser.step()
            schedule.step()
    return net.eval()


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Small nets train faster on one thread, and much faster when the cores are shared: two threads
    spin-waiting on a busy machine cost several times the work itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    # The dynamo exporter may write the weights beside the model; a private folder keeps that out of the zoo.
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        tmp = Path(folder) / path.name
        _export_to(net, example, tmp, dynamo, opset)
        model = onnx.load(str(tmp))  # loads external weights too; saved back inline
        metadata = {"labels": json.dumps(labels), "onnxattack.zoo": spec.name, "task": spec.task,
                    "input_range": json.dumps(list(spec.input_range))}
        if spec.top_k:
            metadata["top_k"] = str(spec.top_k)
        onnx.helper.set_model_props(model, metadata)
        onnx.save(model, str(tmp))
        tmp.replace(path)  # a half-written model never takes the final name


def _export_to(net: nn.Module, example: torch.Tensor, tmp: Path, dynamo: bool, opset: int) -> None:
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


def _scores(path: Path, x: np.ndarray) -> np.ndarray:
    """The exported model's scores in onnxruntime: the metrics describe the file that is attacked."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def build_digits_mosaic(spec: ZooModel, path: Path) -> dict:
    split = data.digit_mosaics()  # its training mosaics are unused here: fresh ones are drawn every epoch
    torch.manual_seed(0)
    with _torch_threads(1):
        net = train_on_fresh_mosaics(CellMaxCNN(), data.training_digits(shifted=True), epochs=6, per_epoch=10_000)
    export(net, split.x_test, path, split.labels, spec, dynamo=True, opset=18)
    return classifier_metrics(_scores(path, split.x_test), split.y_test, 0.5)


def build_digits_ranker(spec: ZooModel, path: Path) -> dict:
    split = data.digit_mosaics(digits_per_mosaic=(3, 3), seed=1)
    torch.manual_seed(0)
    net = train(MosaicCNN(head=None), split.x_train, split.y_train, pairwise_ranking_loss, epochs=8)
    export(net, split.x_test, path, split.labels, spec, dynamo=False, opset=13)
    return ranker_metrics(_scores(path, split.x_test), split.y_test, spec.top_k or 3)


def build_yeast_mlp(spec: ZooModel, path: Path) -> dict:
    split = data.yeast()
    mean = torch.from_numpy(split.x_train.mean(0))
    std = torch.from_numpy(split.x_train.std(0) + 1e-6)
    torch.manual_seed(0)
    net = train(TabularMLP(mean, std, split.y_train.shape[1]), split.x_train, split.y_train,
                nn.BCEWithLogitsLoss(), epochs=30, lr=1e-3)
    export(net, split.x_test, path, split.labels, spec, dynamo=False, opset=17)
    return classifier_metrics(_scores(path, split.x_test), split.y_test, 0.0)


def build_yeast_mlp_int8(spec: ZooModel, path: Path) -> dict:
    """yeast-mlp (built first if missing) through onnxruntime's own quantize_dynamic, int8 weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".tmp.onnx")
    quantize_dynamic(str(build("yeast-mlp", path.parent).path), str(tmp), weight_type=QuantType.QInt8)
    model = onnx.load(str(tmp))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "onnxattack.zoo": spec.name})
    onnx.save(model, str(tmp))
    tmp.replace(path)
    split = data.yeast()
    return classifier_metrics(_scores(path, split.x_test), split.y_test, 0.0)


def build_yeast_forest(spec: ZooModel, path: Path) -> dict:
    """Small forests (25 trees, depth 8) keep the file and onnxruntime's per-query cost small."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.multiclass import OneVsRestClassifier

    split = data.yeast()
    forest = OneVsRestClassifier(RandomForestClassifier(n_estimators=25, max_depth=8, random_state=0, n_jobs=1))
    forest.fit(split.x_train, split.y_train.astype(np.int64))
    model = to_onnx(forest, split.x_train[:1], options={"zipmap": False}, target_opset=17)
    _keep_outputs(model, {"probabilities"})
    metadata = {"labels": json.dumps(split.labels), "onnxattack.zoo": spec.name, "task": spec.task,
                "input_range": json.dumps(list(spec.input_range))}
    onnx.helper.set_model_props(model, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return classifier_metrics(_scores(path, split.x_test), split.y_test, 0.5)


def build_topics_text(spec: ZooModel, path: Path) -> dict:
    """Topic tagger on sentences made from shipped word lists (model_zoo.text): input_ids + attention_mask
    (int64), an nn.Embedding first; torch's legacy exporter, as optimum and most text exports are."""
    split = text.topic_sentences()
    torch.manual_seed(0)
    net = TopicTagger(len(text.vocabulary().words), len(split.labels))
    with _torch_threads(1):
        train(net, (split.ids_train, split.mask_train), split.y_train, nn.BCEWithLogitsLoss(), epochs=15, lr=5e-3)
    names = ["input_ids", "attention_mask"]
    example = (torch.from_numpy(split.ids_test[:2]), torch.from_numpy(split.mask_test[:2]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, str(tmp), dynamo=False, opset_version=17, input_names=names,
                          output_names=["scores"], dynamic_axes={name: {0: "batch"} for name in [*names, "scores"]})
    model = onnx.load(str(tmp))
    onnx.helper.set_model_props(model, {"labels": json.dumps(split.labels), "onnxattack.zoo": spec.name,
                                        "task": spec.task, "vocabulary": json.dumps(text.vocabulary().words)})
    onnx.save(model, str(tmp))
    tmp.replace(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {"input_ids": split.ids_test, "attention_mask": split.mask_test})[0]
    return classifier_metrics(scores, split.y_test, 0.5)


def _keep_outputs(model: onnx.ModelProto, names: set[str]) -> None:
    """Drop the label output skl2onnx adds next to the probabilities (the zoo's files have one output)."""
    kept = [output for output in model.graph.output if output.name in names]
    del model.graph.output[:]
    model.graph.output.extend(kept)


BUILDERS: dict[str, Callable[[ZooModel, Path], dict]] = {
    "digits-mosaic": build_digits_mosaic,
    "digits-ranker": build_digits_ranker,
    "yeast-mlp": build_yeast_mlp,
    "yeast-mlp-int8": build_yeast_mlp_int8,
    "yeast-forest": build_yeast_forest,
    "topics-text": build_topics_text,
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
    force = "--force" in argv
    for name in [arg for arg in argv if arg != "--force"] or list(MODELS):
        built = build(name, zoo_dir(), force=force)
        print(name, built.path, json.dumps(built.metrics))
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
