"""Reduce*-18 (and ReduceMax/Min-20): the axes are an optional second input."""

from __future__ import annotations

from collections.abc import Callable

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from ._common import normalise_axes, optional_constant_list, register


def _amax(x: torch.Tensor, dim: list[int], keepdim: bool) -> torch.Tensor:
    return torch.amax(x, dim=dim, keepdim=keepdim)


def _amin(x: torch.Tensor, dim: list[int], keepdim: bool) -> torch.Tensor:
    return torch.amin(x, dim=dim, keepdim=keepdim)


def _prod(x: torch.Tensor, dim: list[int], keepdim: bool) -> torch.Tensor:
    for axis in sorted(dim, reverse=True):
        x = torch.prod(x, dim=axis, keepdim=keepdim)
    return x


_REDUCTIONS: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceSum": lambda x, d, k: torch.sum(x, dim=d, keepdim=k),
    "ReduceMax": _amax,
    "ReduceMin": _amin,
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.sqrt(torch.sum(x * x, dim=d, keepdim=k)),
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}


class ReduceWithAxesInput(nn.Module, OnnxToTorchModule):
    """ONNX Reduce* with axes known at conversion (static) or given at run time."""

    def __init__(self, operation: str, keepdims: bool, noop_with_empty_axes: bool,
                 static_axes: list[int] | None) -> None:
        super().__init__()
        self.operation = operation
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes
        self.static_axes = static_axes

    def forward(self, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        chosen = self.static_axes if axes is None else axes.tolist()
        if not chosen:
            if self.noop_with_empty_axes:
                return x
            chosen = list(range(x.dim()))
        return _REDUCTIONS[self.operation](x, normalise_axes(chosen, x.dim()), self.keepdims)


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attributes = node.attributes
    axes_name = node.input_values[1] if len(node.input_values) > 1 else None
    static_axes = optional_constant_list(graph, axes_name)
    module = ReduceWithAxesInput(
        operation=node.operation_type,
        keepdims=bool(attributes.get("keepdims", 1)),
        noop_with_empty_axes=bool(attributes.get("noop_with_empty_axes", 0)),
        static_axes=static_axes,
    )
    if axes_name and static_axes is None:
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


for _operation in _REDUCTIONS:
    if _operation != "ReduceSum":  # ReduceSum took its axes as an input since version 13
        register(_operation, [18])(_convert)
for _operation in ("ReduceMax", "ReduceMin"):
    register(_operation, [20])(_convert)
