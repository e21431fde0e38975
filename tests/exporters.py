"""Small torch models exported every way a user would, for the bridge tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


class MLP(nn.Module):
    def __init__(self, features: int = 12, labels: int = 5, head: str | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 16), nn.Tanh(), nn.Linear(16, labels))
        self.head = head

    def forward(self, x):
        z = self.net(x)
        return torch.sigmoid(z) if self.head == "sigmoid" else z


class CNN(nn.Module):
    def __init__(self, labels: int = 5, head: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, labels)
        self.head = head

    def forward(self, x):
        h = nn.functional.avg_pool2d(torch.tanh(self.bn(self.conv(x))), 2)
        z = self.fc(h.reshape(h.shape[0], -1))
        return torch.softmax(z, dim=1) if self.head == "softmax" else z


class ResidualNet(nn.Module):
    def __init__(self, labels: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU())
        self.fc = nn.Linear(4, labels)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        h = h + self.block(h)
        return torch.sigmoid(self.fc(h.mean(dim=(2, 3))))


class Attention(nn.Module):
    def __init__(self, labels: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation="gelu")
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, labels)

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], -1, 4))
        return self.fc(self.norm(self.encoder(tokens).mean(dim=1)))


class NHWCPreprocessed(nn.Module):
    """Takes NHWC pixels in [0, 255]; transposes and normalises inside the graph."""

    def __init__(self, labels: int = 5) -> None:
        super().__init__()
        self.cnn = CNN(labels)
        self.cnn.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)
        return self.cnn((x / 255.0 - 0.5) / 0.25)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = MLP(12, 5)
        self.aux = nn.Linear(12, 3)

    def forward(self, x):
        return self.aux(x), torch.sigmoid(self.body(x))


def export_torch(model: nn.Module, sample: torch.Tensor, path: Path, *, dynamo: bool, opset: int,
                 dynamic_batch: bool = True, output_names: list[str] | None = None) -> Path:
    model.eval()
    output_names = output_names or ["scores"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            torch.onnx.export(model, (sample,), str(path), dynamo=True, opset_version=opset,
                              input_names=["input"], output_names=output_names, dynamic_shapes=shapes,
                              verbose=False)
        else:
            axes = {"input": {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
            torch.onnx.export(model, (sample,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=output_names,
                              dynamic_axes=axes if dynamic_batch else None)
    return path


def with_constant_node_weights(source: Path, path: Path) -> Path:
    """Rewrite a model so its weights live in Constant nodes (as PaddlePaddle exports do)."""
    model = onnx.load(str(source))
    constants = [helper.make_node("Constant", [], [init.name], value=init) for init in model.graph.initializer]
    initializer_names = {init.name for init in model.graph.initializer}
    kept_inputs = [v for v in model.graph.input if v.name not in initializer_names]
    del model.graph.initializer[:]
    del model.graph.input[:]
    model.graph.input.extend(kept_inputs)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(constants + nodes)
    onnx.save(model, str(path))
    return path


def fixed_batch_reshape_model(path: Path, features: int = 6, labels: int = 4) -> Path:
    """Batch size 1 baked into the input and into a Reshape constant (common in the wild)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(features, labels)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, features], dtype=np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["scores"])]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, labels])],
                              [weight, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def batch_merging_model(path: Path, labels: int = 4) -> Path:
    """Batch size 1 baked into a Reshape to [1, -1, 3]: with a renamed batch dim it still runs, but merges
    the rows of a batch into one (ddddocr's detector does this)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(3, labels)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, -1, 3], dtype=np.int64), "shape")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["merged"]),
             helper.make_node("ReduceMax", ["merged", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["scores"])]
    graph = helper.make_graph(nodes, "merging", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, labels])],
                              [weight, shape, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def unconvertible_model(path: Path) -> Path:
    """Scores pass through ai.onnx.ml Binarizer and Hardmax: neither has a converter (and neither has a gradient)."""
    nodes = [helper.make_node("Binarizer", ["input"], ["scaled"], domain="ai.onnx.ml", threshold=0.5),
             helper.make_node("Hardmax", ["scaled"], ["scores"], axis=1)]
    graph = helper.make_graph(nodes, "ml", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    onnx.save(model, str(path))
    return path


def sklearn_mlp(path: Path) -> tuple[Path, np.ndarray]:
    """A multi-label MLPClassifier on real data (scikit-learn's digits), exported by skl2onnx."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = np.stack([digits.target % 2 == 0, digits.target >= 5, np.isin(digits.target, (2, 3, 5, 7))], axis=1)
    classifier = MLPClassifier(hidden_layer_sizes=(16,), max_iter=200, random_state=0).fit(x[:600], y[:600].astype(int))
    model = to_onnx(classifier, x[:1], options={id(classifier): {"zipmap": False}})
    onnx.save(model, str(path))
    return path, x[600:]
