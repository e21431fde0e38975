"""QuantizeLinear and DequantizeLinear (versions 10, 13, 19, 21, 23-25), integers held in float tensors.

ONNX semantics: QuantizeLinear y = saturate(round(x / scale) + zero_point), rounding half to
even, saturating to the range of the output type (the zero point's type; else `output_dtype`
from version 21; else uint8). DequantizeLinear y = (x - zero_point) * scale. scale and
zero_point are scalars (per tensor) or 1-D along `axis` (per axis, from version 13; default 1).

Where this departs: the quantised integers stay float tensors holding integer values, so the
graph stays differentiable; a DequantizeLinear of a real integer tensor (int8 weights) casts it
first. The gradient of QuantizeLinear is straight-through: 1 / scale where x maps inside the
representable range, 0 where it saturates (the true derivative is 0 almost everywhere).
Not supported: blocked quantisation (block_size > 0), float8 / float4 / 2-bit types.
"""

from __future__ import annotations

import torch
from onnx import TensorProto
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import register

_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535), TensorProto.INT16: (-32768, 32767),
    TensorProto.INT32: (-2 ** 31, 2 ** 31 - 1),
    TensorProto.UINT4: (0, 15), TensorProto.INT4: (-8, 7),
}
_VERSIONS = [10, 13, 19, 21, 23, 24, 25]


def _element_type(graph: OnnxGraph, name: str) -> int | None:
    """The ONNX element type of a tensor: an initializer, a Constant's output or typed in value_info."""
    if name in graph.initializers:
        return int(graph.initializers[name].proto.data_type)
    try:
        producer, _ = graph.value_as_node_output(name)
    except KeyError:
        producer = None
    if producer is not None and producer.operation_type == "Constant" and "value" in producer.attributes:
        return int(producer.attributes["value"].proto.data_type)
    info = graph.value_info.get(name)
    if info is not None and info.type.tensor_type.elem_type:
        return int(info.type.tensor_type.elem_type)
    return None


def _along_axis(value: torch.Tensor, axis: int, rank: int) -> torch.Tensor:
    if value.dim() == 0 or value.numel() == 1 and value.dim() <= 1:
        return value.reshape(())
    shape = [1] * rank
    shape[axis % rank] = value.numel()
    return value.reshape(shape)


class QuantizeLinear(nn.Module, OnnxToTorchModule):
    def __init__(self, axis: int, low: int, high: int) -> None:
        super().__init__()
        self.axis = axis
        self.low = low
        self.high = high

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
        scale = _along_axis(scale.to(x.dtype), self.axis, x.dim())
        scaled = x / scale
        rounded = scaled + (torch.round(scaled) - scaled).detach()  # straight-through rounding
        if zero_point is not None:
            rounded = rounded + _along_axis(zero_point.to(x.dtype), self.axis, x.dim())
        return torch.clamp(rounded, self.low, self.high)


class DequantizeLinear(nn.Module, OnnxToTorchModule):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
        dtype = scale.dtype if scale.dtype.is_floating_point else torch.float32
        values = x.to(dtype)
        if zero_point is not None:
            values = values - _along_axis(zero_point.to(dtype), self.axis, x.dim())
        return values * _along_axis(scale, self.axis, x.dim())


def _check_plain(node: OnnxNode) -> None:
    if node.attributes.get("block_size", 0):
        raise NotImplementedError(f"{node.operation_type} with block_size > 0 (blocked quantisation)")


@register("QuantizeLinear", _VERSIONS)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    _check_plain(node)
    zero_point = node.input_values[2] if len(node.input_values) > 2 else ""
    element = _element_type(graph, zero_point) if zero_point else None
    if element is None:
        element = int(node.attributes.get("output_dtype", 0)) or TensorProto.UINT8
    if element not in _RANGES:
        raise NotImplementedError(f"QuantizeLinear to {TensorProto.DataType.Name(element)}")
    low, high = _RANGES[element]
    module = QuantizeLinear(int(node.attributes.get("axis", 1)), low, high)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


@register("DequantizeLinear", _VERSIONS)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    _check_plain(node)
    element = _element_type(graph, node.input_values[0])
    if element is not None and element not in _RANGES:
        raise NotImplementedError(f"DequantizeLinear of {TensorProto.DataType.Name(element)}")
    module = DequantizeLinear(int(node.attributes.get("axis", 1)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
