"""Split-18, Pad-18+ and AveragePool-19: versions that added attributes or inputs."""

from __future__ import annotations

import math

import torch
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from ._common import normalise_axes, optional_constant_list


class SplitEven(nn.Module, OnnxToTorchModule):
    """Split-18 with num_outputs: chunks of ceil(size / n), the last one smaller."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        chunk = math.ceil(x.shape[self.axis] / self.num_outputs)
        return tuple(torch.split(x, chunk, dim=self.axis))


@add_converter(operation_type="Split", version=18)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    has_split_input = len(node.input_values) > 1 and node.input_values[1]
    if has_split_input or "num_outputs" not in node.attributes:
        return get_converter("Split", 13)(node, graph)
    module = SplitEven(axis=node.attributes.get("axis", 0), num_outputs=node.attributes["num_outputs"])
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


_TORCH_PAD_MODE = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


class PadWithAxes(nn.Module, OnnxToTorchModule):
    """Pad-18+: pads (and optionally axes) as inputs; ONNX lists all begins, then all ends."""

    def __init__(self, mode: str, pads: list[int], axes: list[int] | None, value: float) -> None:
        super().__init__()
        self.mode = mode
        self.pads = pads
        self.axes = axes
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = normalise_axes(self.axes, x.dim()) if self.axes else list(range(x.dim()))
        begins = dict(zip(axes, self.pads[: len(axes)], strict=True))
        ends = dict(zip(axes, self.pads[len(axes):], strict=True))
        torch_pads: list[int] = []
        for dim in reversed(range(x.dim())):
            torch_pads += [begins.get(dim, 0), ends.get(dim, 0)]
        while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        if self.mode == "constant":
            return nn.functional.pad(x, torch_pads, mode="constant", value=self.value)
        return nn.functional.pad(x, torch_pads, mode=self.mode)


@add_converter(operation_type="Pad", version=18)
@add_converter(operation_type="Pad", version=19)
@add_converter(operation_type="Pad", version=21)
@add_converter(operation_type="Pad", version=23)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    inputs = list(node.input_values) + [""] * (4 - len(node.input_values))
    pads = optional_constant_list(graph, inputs[1])
    axes = optional_constant_list(graph, inputs[3])
    value = optional_constant_list(graph, inputs[2]) if inputs[2] else [0.0]
    if pads is None or value is None or (inputs[3] and axes is None):
        if not inputs[3]:
            return get_converter("Pad", 13)(node, graph)
        raise NotImplementedError("Pad with run-time pads and axes inputs")
    mode = node.attributes.get("mode", "constant")
    module = PadWithAxes(_TORCH_PAD_MODE[mode], [int(p) for p in pads], axes, float(value[0] if value else 0.0))
    mapping = OnnxMapping(inputs=(inputs[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


@add_converter(operation_type="AveragePool", version=19)
@add_converter(operation_type="AveragePool", version=22)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    dilations = node.attributes.get("dilations")
    if dilations and any(d != 1 for d in dilations):
        raise NotImplementedError("AveragePool with dilations other than 1")
    return get_converter("AveragePool", 11)(node, graph)


__all__ = ["PadWithAxes", "SplitEven", "onnx_mapping_from_node"]
