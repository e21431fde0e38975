"""Element-wise activations: Gelu-20, Mish-18/22, ThresholdedRelu-10/22, Shrink-9, Clip-11/12/13.

Clip replaces onnx2torch's own converter, which refuses bounds computed in the graph (openWakeWord's
melspectrogram clips at max(x) - 80 dB) and a left-out min with a max given ('' as min).
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import inputs_padded, mapping, optional_constant_list, register


class Gelu(nn.Module, OnnxToTorchModule):
    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate=self.approximate)


@register("Gelu", [20])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu approximate={approximate!r} is not defined by ONNX")
    return OperationConverterResult(torch_module=Gelu(approximate), onnx_mapping=onnx_mapping_from_node(node))


class Mish(nn.Module, OnnxToTorchModule):
    """y = x * tanh(softplus(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.mish(x)


@register("Mish", [18, 22])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(torch_module=Mish(), onnx_mapping=onnx_mapping_from_node(node))


class ThresholdedRelu(nn.Module, OnnxToTorchModule):
    """y = x where x > alpha, else 0 (alpha is 1 by default)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.alpha, x, torch.zeros_like(x))


@register("ThresholdedRelu", [10, 22])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = ThresholdedRelu(float(node.attributes.get("alpha", 1.0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class Shrink(nn.Module, OnnxToTorchModule):
    """y = x + bias where x < -lambd, x - bias where x > lambd, else 0."""

    def __init__(self, bias: float, lambd: float) -> None:
        super().__init__()
        self.bias = bias
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(x)
        return torch.where(x < -self.lambd, x + self.bias, torch.where(x > self.lambd, x - self.bias, zero))


@register("Shrink", [9])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = Shrink(float(node.attributes.get("bias", 0.0)), float(node.attributes.get("lambd", 0.5)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class Clip(nn.Module, OnnxToTorchModule):
    """clamp(x, min, max); each bound absent, a constant, or a tensor computed in the graph."""

    def __init__(self, low: float | int | None, high: float | int | None) -> None:
        super().__init__()
        self.low = low
        self.high = high

    def forward(self, x: torch.Tensor, low: torch.Tensor | None = None,
                high: torch.Tensor | None = None) -> torch.Tensor:
        low_bound = self.low if low is None else low
        high_bound = self.high if high is None else high
        if low_bound is not None:  # one bound at a time: torch.clamp takes two numbers or two tensors
            x = torch.clamp(x, min=low_bound)
        if high_bound is not None:  # min > max gives max everywhere, as in onnxruntime
            x = torch.clamp(x, max=high_bound)
        return x


def _constant_bound(graph: OnnxGraph, name: str) -> tuple[bool, float | int | None]:
    """(is it known before run time, its value): absent bounds are known to be None."""
    if not name:
        return True, None
    values = optional_constant_list(graph, name)
    if values is None:
        return False, None
    if len(values) != 1:
        raise NotImplementedError(f"Clip with a bound of {len(values)} values (a scalar is required)")
    return True, values[0]


@register("Clip", [11, 12, 13], override_upstream=True)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    names = inputs_padded(node, 3)
    low_known, low = _constant_bound(graph, names[1])
    high_known, high = _constant_bound(graph, names[2])
    inputs = [names[0], "" if low_known else names[1], "" if high_known else names[2]]
    while inputs[-1] == "":
        inputs.pop()
    return OperationConverterResult(torch_module=Clip(low, high), onnx_mapping=mapping(inputs, node))
