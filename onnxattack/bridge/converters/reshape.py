"""Reshape-19/21: same as 14, with allowzero=1 honoured (a 0 in the shape means size 0)."""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import register


class Reshape(nn.Module, OnnxToTorchModule):
    def __init__(self, allow_zero: bool) -> None:
        super().__init__()
        self.allow_zero = allow_zero

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        sizes = [int(size) for size in shape.tolist()]
        if not self.allow_zero:
            sizes = [x.shape[i] if size == 0 else size for i, size in enumerate(sizes)]
        return torch.reshape(x, sizes)


@register("Reshape", [19, 21])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = Reshape(allow_zero=bool(node.attributes.get("allowzero", 0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
