"""ai.onnx.ml Scaler, Normalizer, LinearClassifier and LinearRegressor (version 1), as onnxruntime computes them.

- Scaler: y = (x - offset) * scale, offset and scale of length 1 or of the feature count.
- Normalizer: each row divided by its max (MAX), sum of |x| (L1) or Euclidean norm (L2).
- LinearClassifier: scores = x W^T + intercepts, W = coefficients as [classes, features];
  output 0 is the label (argmax, or score > 0 in the binary case), output 1 the scores after
  post_transform. NONE: raw; LOGISTIC: sigmoid; SOFTMAX: softmax over classes; SOFTMAX_ZERO:
  softmax that leaves entries equal to 0 out of the sum (onnxruntime: |v| <= 1e-7), giving them
  ~0. onnxruntime's binary case (one coefficient row, two class labels) gives two columns:
  [1 - s, s] with s the raw score (NONE, SOFTMAX, SOFTMAX_ZERO) or sigmoid(score) (LOGISTIC).
  multi_class does not change the scores in onnxruntime. PROBIT is refused.
- LinearRegressor: y = x W^T + intercepts, W as [targets, features]; post_transform NONE only.

Only the scores are differentiable; the label output is computed (argmax) but carries no
gradient. String class labels: the label output holds the class index instead.

Naming: onnx2torch 1.5.15 could not name an ai.onnx.ml node's module at all (see
_common._patch_node_naming, applied on import of this package).
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import ML_DOMAIN, register


def _features(x: torch.Tensor) -> torch.Tensor:
    x = x if x.dtype.is_floating_point else x.to(torch.float32)
    return x.reshape(1, -1) if x.dim() == 1 else x


class Scaler(nn.Module, OnnxToTorchModule):
    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(self, offset: list[float], scale: list[float]) -> None:
        super().__init__()
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _features(x)
        return (x - self.offset.to(x.dtype)) * self.scale.to(x.dtype)


@register("Scaler", [1], ML_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    offset = [float(v) for v in node.attributes.get("offset", [0.0])]
    scale = [float(v) for v in node.attributes.get("scale", [1.0])]
    return OperationConverterResult(torch_module=Scaler(offset, scale), onnx_mapping=onnx_mapping_from_node(node))


class Normalizer(nn.Module, OnnxToTorchModule):
    def __init__(self, norm: str) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _features(x)
        if self.norm == "MAX":
            return x / torch.amax(x, dim=-1, keepdim=True)
        if self.norm == "L1":
            return x / torch.sum(torch.abs(x), dim=-1, keepdim=True)
        return x / torch.sqrt(torch.sum(x * x, dim=-1, keepdim=True))


@register("Normalizer", [1], ML_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    norm = node.attributes.get("norm", "MAX")
    if norm not in ("MAX", "L1", "L2"):
        raise NotImplementedError(f"Normalizer norm={norm!r}")
    return OperationConverterResult(torch_module=Normalizer(norm), onnx_mapping=onnx_mapping_from_node(node))


def softmax_zero(scores: torch.Tensor) -> torch.Tensor:
    """onnxruntime's SOFTMAX_ZERO: entries with |v| <= 1e-7 stay out of the sum and get v * exp(-max)."""
    top = torch.amax(scores, dim=-1, keepdim=True).detach()
    nonzero = scores.abs() > 1e-7
    shifted = torch.where(nonzero, torch.exp(scores - top), scores * torch.exp(-top))
    total = torch.sum(torch.where(nonzero, shifted, torch.zeros_like(shifted)), dim=-1, keepdim=True)
    return shifted / total


class LinearModel(nn.Module, OnnxToTorchModule):
    """LinearClassifier (outputs label, scores) or LinearRegressor (output scores)."""
    weight: torch.Tensor
    bias: torch.Tensor
    labels: torch.Tensor


    def __init__(self, coefficients: list[float], intercepts: list[float], rows: int, post_transform: str,
                 classifier: bool, binary: bool, labels: list[int] | None, outputs: int) -> None:
        super().__init__()
        weight = torch.tensor(coefficients, dtype=torch.float32).reshape(rows, -1)
        self.register_buffer("weight", weight)
        bias = torch.tensor(intercepts, dtype=torch.float32) if intercepts else torch.zeros(rows)
        self.register_buffer("bias", bias)
        self.register_buffer("labels", torch.tensor(labels if labels else [], dtype=torch.int64))
        self.post_transform = post_transform
        self.classifier = classifier
        self.binary = binary
        self.outputs = outputs

    def forward(self, x: torch.Tensor):
        x = _features(x)
        raw = torch.matmul(x, self.weight.to(x.dtype).transpose(0, 1)) + self.bias.to(x.dtype)
        if not self.classifier:
            return raw
        if self.binary:
            score = torch.sigmoid(raw) if self.post_transform == "LOGISTIC" else raw
            scores = torch.cat([1 - score, score], dim=-1)
            index = (raw[:, 0] > 0).to(torch.int64)
        else:
            if self.post_transform == "LOGISTIC":
                scores = torch.sigmoid(raw)
            elif self.post_transform == "SOFTMAX":
                scores = torch.softmax(raw, dim=-1)
            elif self.post_transform == "SOFTMAX_ZERO":
                scores = softmax_zero(raw)
            else:
                scores = raw
            index = torch.argmax(raw, dim=-1)
        label = self.labels[index] if self.labels.numel() else index
        results = (label, scores)[: self.outputs]
        return results[0] if self.outputs == 1 else results


@register("LinearClassifier", [1], ML_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    attributes = node.attributes
    post_transform = attributes.get("post_transform", "NONE")
    if post_transform not in ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"):
        raise NotImplementedError(f"LinearClassifier post_transform={post_transform!r}")
    labels = attributes.get("classlabels_ints")
    names = attributes.get("classlabels_strings")
    class_count = len(labels) if labels else len(names) if names else 0
    coefficients = [float(v) for v in attributes["coefficients"]]
    intercepts = [float(v) for v in attributes.get("intercepts", [])]
    rows = len(intercepts) if intercepts else class_count
    if not rows or len(coefficients) % rows:
        raise NotImplementedError("LinearClassifier whose coefficients do not split into class rows")
    binary = rows == 1 and class_count == 2
    module = LinearModel(coefficients, intercepts, rows, post_transform, True, binary,
                         [int(v) for v in labels] if labels else None, len(node.output_values))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


@register("LinearRegressor", [1], ML_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    attributes = node.attributes
    post_transform = attributes.get("post_transform", "NONE")
    if post_transform != "NONE":
        raise NotImplementedError(f"LinearRegressor post_transform={post_transform!r}")
    targets = int(attributes.get("targets", 1))
    module = LinearModel([float(v) for v in attributes["coefficients"]],
                         [float(v) for v in attributes.get("intercepts", [])], targets, "NONE", False, False,
                         None, 1)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
