"""Squeeze-13/21 with constant axes and Gather with a constant scalar index: modules that hold them.

onnx2torch's Squeeze-13 reads its axes tensor on every call (a sort, an unbind and a Python int per
axis), and its Gather indexes with a tensor even for one constant position. An exporter's
`out[:, -1]` (Gather, axis 1, index -1) and `Squeeze(axes=[1])` around a GRU then cost a handful of
ops each per call where the native module costs one (bench/overhead.py graph_overhead, gru-tagger).
Axes and indices computed at run time, and index tensors of any rank > 0, stay with onnx2torch.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from ._common import mapping, optional_constant, register, upstream_converter


class SqueezeAxes(nn.Module, OnnxToTorchModule):
    def __init__(self, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.axes = axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.squeeze(x, dim=self.axes)


class SelectIndex(nn.Module, OnnxToTorchModule):
    """Gather of one constant index: the indexed axis goes away, as with numpy.take of a scalar."""

    def __init__(self, axis: int, index: int) -> None:
        super().__init__()
        self.axis = axis
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.select(x, self.axis, self.index)


def _constant_ints(graph: OnnxGraph, names: list[str], rank: int) -> torch.Tensor | None:
    """The second input as an integer tensor of `rank` dims when it is a constant, else None."""
    value = optional_constant(graph, names[1] if len(names) > 1 else None)
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.dim() != rank:
        return None
    return value


_UPSTREAM_SQUEEZE = {version: upstream_converter("Squeeze", version) for version in (13, 21)}
_UPSTREAM_GATHER = {version: upstream_converter("Gather", version) for version in (1, 11, 13)}


def _upstream(node: OnnxNode, graph: OnnxGraph, converter) -> OperationConverterResult:
    if converter is None:
        raise NotImplementedError(f"{node.operation_type} with inputs computed at run time")
    return converter(node, graph)


def _squeeze(version: int):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = list(node.input_values)
        axes = _constant_ints(graph, names, rank=1)
        if axes is None or axes.numel() == 0:  # no axes: every dim of size 1, known only at run time
            return _upstream(node, graph, _UPSTREAM_SQUEEZE[version])
        module = SqueezeAxes(tuple(int(axis) for axis in axes.tolist()))
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping(names[:1], node))

    return convert


def _gather(version: int):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = list(node.input_values)
        index = _constant_ints(graph, names, rank=0)
        if index is None:
            return _upstream(node, graph, _UPSTREAM_GATHER[version])
        module = SelectIndex(int(node.attributes.get("axis", 0)), int(index))
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping(names[:1], node))

    return convert


for _version in _UPSTREAM_SQUEEZE:
    register("Squeeze", [_version], override_upstream=True)(_squeeze(_version))
for _version in _UPSTREAM_GATHER:
    register("Gather", [_version], override_upstream=True)(_gather(_version))
