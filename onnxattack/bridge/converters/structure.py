"""Split-18 and Pad (every version, any rank): versions that added attributes or inputs."""

from __future__ import annotations

import math

import torch
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    onnx_mapping_from_node,
)
from torch import nn

from ._common import inputs_padded, mapping, normalise_axes, optional_constant_list, register


class SplitEven(nn.Module, OnnxToTorchModule):
    """Split-18 with num_outputs: chunks of ceil(size / n), the last one smaller."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        chunk = math.ceil(x.shape[self.axis] / self.num_outputs)
        return tuple(torch.split(x, chunk, dim=self.axis))


@register("Split", [18])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    has_split_input = len(node.input_values) > 1 and node.input_values[1]
    if has_split_input or "num_outputs" not in node.attributes:
        return get_converter("Split", 13)(node, graph)
    module = SplitEven(axis=node.attributes.get("axis", 0), num_outputs=node.attributes["num_outputs"])
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


class Pad(nn.Module, OnnxToTorchModule):
    """ONNX Pad (versions 2 to 25) on any rank and any axis.

    pads lists all begins, then all ends, for `axes` (all dims when absent); negative pads
    crop. constant mode maps onto torch's pad; reflect (mirror without repeating the edge),
    edge (repeat the edge) and wrap (periodic) gather along each padded dim, so they work on
    every dim (torch's own reflect/replicate/circular pads only reach the last 1-3 dims).
    Pads, value and axes known at conversion are used as such; otherwise read at run time.
    """

    def __init__(self, mode: str, pads: list[int] | None, axes: list[int] | None, value: float | None) -> None:
        super().__init__()
        if mode not in ("constant", "reflect", "edge", "wrap"):
            raise NotImplementedError(f"Pad mode={mode!r}")
        self.mode = mode
        self.pads = pads
        self.axes = axes
        self.value = value

    def forward(self, x: torch.Tensor, pads: torch.Tensor | None = None, value: torch.Tensor | None = None,
                axes: torch.Tensor | None = None) -> torch.Tensor:
        if self.pads is None and pads is None:
            raise ValueError("Pad needs its pads, as an attribute or an input")
        pad_list = self.pads if self.pads is not None else [int(p) for p in pads.tolist()]  # type: ignore[union-attr]
        axis_list = self.axes if self.axes is not None else (axes.tolist() if axes is not None else None)
        axis_list = normalise_axes(axis_list, x.dim()) if axis_list else list(range(x.dim()))
        begins = dict(zip(axis_list, pad_list[: len(axis_list)], strict=True))
        ends = dict(zip(axis_list, pad_list[len(axis_list):], strict=True))
        if self.mode == "constant":
            fill = self.value
            if fill is None:
                fill = float(value.reshape(-1)[0]) if value is not None and value.numel() else 0.0
            torch_pads: list[int] = []
            for dim in reversed(range(x.dim())):
                torch_pads += [begins.get(dim, 0), ends.get(dim, 0)]
            return nn.functional.pad(x, torch_pads, mode="constant", value=fill)
        for dim in axis_list:
            x = _gather_pad(x, dim, begins[dim], ends[dim], self.mode)
        return x


def _gather_pad(x: torch.Tensor, dim: int, before: int, after: int, mode: str) -> torch.Tensor:
    if before < 0:
        x = x.narrow(dim, -before, x.shape[dim] + before)
        before = 0
    if after < 0:
        x = x.narrow(dim, 0, x.shape[dim] + after)
        after = 0
    if before == 0 and after == 0:
        return x
    size = x.shape[dim]
    position = torch.arange(-before, size + after, device=x.device)
    if mode == "edge":
        index = position.clamp(0, size - 1)
    elif mode == "wrap":
        index = torch.remainder(position, size)
    elif size == 1:
        index = torch.zeros_like(position)
    else:  # reflect: period 2 * (size - 1), the edge element not repeated
        period = 2 * (size - 1)
        folded = torch.remainder(position, period)
        index = torch.where(folded < size, folded, period - folded)
    return x.index_select(dim, index)


@register("Pad", [2], override_upstream=True)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = Pad(node.attributes.get("mode", "constant"), [int(p) for p in node.attributes["pads"]], None,
                 float(node.attributes.get("value", 0.0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping([node.input_values[0]], node))


# onnx2torch's own Pad-11/13 maps reflect/edge onto torch's pad (last 1-3 dims only) and lacks
# wrap: it is replaced on purpose.
@register("Pad", [11, 13, 18, 19, 21, 23, 24, 25], override_upstream=True)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    data, pads_name, value_name, axes_name = inputs_padded(node, 4)
    pads = optional_constant_list(graph, pads_name)
    value = optional_constant_list(graph, value_name) if value_name else [0.0]
    axes = optional_constant_list(graph, axes_name)
    if axes_name and axes is None:
        raise NotImplementedError("Pad with axes computed at run time")
    fill = None if value is None else float(value[0]) if value else 0.0
    module = Pad(node.attributes.get("mode", "constant"), None if pads is None else [int(p) for p in pads],
                 None if axes is None else [int(a) for a in axes], fill)
    inputs = [data, pads_name if pads is None else "", value_name if value is None else ""]
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(inputs, node))


__all__ = ["Pad", "SplitEven", "onnx_mapping_from_node"]
