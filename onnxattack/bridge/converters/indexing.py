"""Squeeze-13/21 with constant axes, Gather with a constant scalar index and Slice with constant bounds:
modules that hold them.

onnx2torch's Squeeze-13 reads its axes tensor on every call (a sort, an unbind and a Python int per
axis), and its Gather indexes with a tensor even for one constant position. An exporter's
`out[:, -1]` (Gather, axis 1, index -1) and `Squeeze(axes=[1])` around a GRU then cost a handful of
ops each per call where the native module costs one (bench/overhead.py graph_overhead, gru-tagger).
Its Slice-10/11/13 turns the four bound tensors into slices on every call (19 us against 2 us for
`x[:, 1:]`), and its Slice-9 (bounds as attributes) fails at its first call; Slice-1 it lacks. Axes, indices
and bounds computed at run time, and index tensors of any rank > 0, stay with onnx2torch.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn

from ._common import constant_integers, inputs_padded, mapping, register, run_upstream, upstream_converter


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


class ConstantSlice(nn.Module, OnnxToTorchModule):
    """Slice with bounds known at conversion. A negative step slices the flipped axis forwards: position i of
    the axis is position -i - 1 of its flip, for Python's and ONNX's negative positions alike, and clamping
    to the axis matches ONNX's (an end past the first element, like INT64_MIN, becomes a huge positive end)."""

    def __init__(self, starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> None:
        super().__init__()
        self.flipped = tuple(axis for axis, step in zip(axes, steps, strict=True) if step < 0)
        self.slices = tuple((axis, slice(start, end, step) if step > 0 else slice(-start - 1, -end - 1, -step))
                            for start, end, axis, step in zip(starts, ends, axes, steps, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flipped:
            x = torch.flip(x, self.flipped)
        index = [slice(None)] * x.dim()
        for axis, bounds in self.slices:
            index[axis] = bounds
        return x[tuple(index)]


def _slice_from_inputs(version: int):
    upstream = upstream_converter("Slice", version)

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = inputs_padded(node, 5)  # data, starts, ends, axes, steps ('' where left out)
        values = [constant_integers(graph, name, rank=1) for name in names[1:]]  # None: left out or not constant
        constant = all(not name or value is not None for name, value in zip(names[1:], values, strict=True))
        starts, ends, axes, steps = (None if value is None else value.tolist() for value in values)
        if not constant or starts is None or ends is None:
            return run_upstream(node, graph, upstream)
        return _constant_slice(starts, ends, axes, steps, names[:1], node)

    return convert


def _slice_from_attributes(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    attributes = node.attributes
    return _constant_slice(list(attributes["starts"]), list(attributes["ends"]), attributes.get("axes"), None,
                           list(node.input_values)[:1], node)


def _constant_slice(starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None,
                    inputs: list[str], node: OnnxNode) -> OperationConverterResult:
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        raise NotImplementedError("Slice with bounds of different lengths or a zero step")
    module = ConstantSlice([int(v) for v in starts], [int(v) for v in ends], [int(v) for v in axes],
                           [int(v) for v in steps])
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(inputs, node))


_UPSTREAM_SQUEEZE = {version: upstream_converter("Squeeze", version) for version in (13, 21)}
_UPSTREAM_GATHER = {version: upstream_converter("Gather", version) for version in (1, 11, 13)}


def _squeeze(version: int):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = list(node.input_values)
        axes = constant_integers(graph, names[1] if len(names) > 1 else None, rank=1)
        if axes is None or axes.numel() == 0:  # no axes: every dim of size 1, known only at run time
            return run_upstream(node, graph, _UPSTREAM_SQUEEZE[version])
        module = SqueezeAxes(tuple(int(axis) for axis in axes.tolist()))
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping(names[:1], node))

    return convert


def _gather(version: int):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = list(node.input_values)
        index = constant_integers(graph, names[1] if len(names) > 1 else None, rank=0)
        if index is None:
            return run_upstream(node, graph, _UPSTREAM_GATHER[version])
        module = SelectIndex(int(node.attributes.get("axis", 0)), int(index))
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping(names[:1], node))

    return convert


for _version in _UPSTREAM_SQUEEZE:
    register("Squeeze", [_version], override_upstream=True)(_squeeze(_version))
for _version in _UPSTREAM_GATHER:
    register("Gather", [_version], override_upstream=True)(_gather(_version))
for _version in (10, 11, 13):
    register("Slice", [_version], override_upstream=True)(_slice_from_inputs(_version))
register("Slice", [1, 9], override_upstream=True)(_slice_from_attributes)
