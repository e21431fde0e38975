"""Element-wise activations: Gelu-20, Mish-18/22, ThresholdedRelu-10/22, Shrink-9."""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import register


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
