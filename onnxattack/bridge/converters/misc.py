"""GlobalMaxPool, Upsample, SpaceToDepth, ReverseSequence, Trilu, CastLike, ScatterElements (and Scatter-9).

- GlobalMaxPool-1/22: max over every spatial dim, kept as size 1.
- Upsample-7 (scales attribute) / 9, 10 (scales input): output size floor(size * scale);
  nearest takes input index floor(i / scale); linear interpolates (multi-linearly, dim by dim)
  at the asymmetric source coordinate i / scale, clamped to the last element.
- SpaceToDepth-1/13: [N, C, H, W] -> [N, C*b*b, H/b, W/b], ONNX's DCR-style order
  (reshape [N, C, H/b, b, W/b, b], permute [0, 3, 5, 1, 2, 4]).
- ReverseSequence-10: along time_axis, the first sequence_lens[b] elements of each batch
  entry b (along batch_axis) reversed, the rest kept.
- Trilu-14: upper (default) or lower triangle of the last two dims, diagonal offset k.
- CastLike-15+: cast to the second input's element type.
- Size-1/13/19/21/23+: the element count, an int64 scalar (silero-vad's LSTM branches test it).
- ScatterElements-11/13/16/18 (reduction none/add/mul/max/min) and Scatter-9/11: data with
  `updates` written (or reduced, existing value included) at `indices` along axis; negative
  indices count from the end. Gradient flows to data and updates as torch's scatter gives it.
"""

from __future__ import annotations

import math

import torch
from onnx import TensorProto
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import mapping, optional_constant_list, register


class GlobalMaxPool(nn.Module, OnnxToTorchModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool", [1, 22])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(torch_module=GlobalMaxPool(), onnx_mapping=onnx_mapping_from_node(node))


class Upsample(nn.Module, OnnxToTorchModule):
    def __init__(self, mode: str, scales: list[float] | None) -> None:
        super().__init__()
        self.mode = mode
        self.scales = scales

    def forward(self, x: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        if self.scales is None and scales is None:
            raise ValueError("Upsample needs its scales, as an attribute or an input")
        factors = self.scales if self.scales is not None else [float(s) for s in scales.tolist()]  # type: ignore[union-attr]
        for dim, factor in enumerate(factors):
            if factor == 1.0:
                continue
            size = x.shape[dim]
            out = int(math.floor(size * factor))
            position = torch.arange(out, device=x.device, dtype=torch.float64) / factor
            if self.mode == "nearest":
                index = torch.clamp(torch.floor(position).to(torch.int64), max=size - 1)
                x = x.index_select(dim, index)
                continue
            low = torch.clamp(torch.floor(position), max=size - 1)
            high = torch.clamp(low + 1, max=size - 1)
            weight = (torch.clamp(position, max=size - 1) - low).to(x.dtype)
            shape = [1] * x.dim()
            shape[dim] = out
            weight = weight.reshape(shape)
            x = x.index_select(dim, low.to(torch.int64)) * (1 - weight) + x.index_select(dim, high.to(torch.int64)) \
                * weight
        return x


def _upsample_mode(node: OnnxNode) -> str:
    mode = node.attributes.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise NotImplementedError(f"Upsample mode={mode!r}")
    return "nearest" if mode == "nearest" else "linear"


@register("Upsample", [7])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = Upsample(_upsample_mode(node), [float(s) for s in node.attributes["scales"]])
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping([node.input_values[0]], node))


@register("Upsample", [9, 10])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    scales = optional_constant_list(graph, node.input_values[1])
    module = Upsample(_upsample_mode(node), None if scales is None else [float(s) for s in scales])
    inputs = [node.input_values[0]] if scales is not None else list(node.input_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(inputs, node))


class SpaceToDepth(nn.Module, OnnxToTorchModule):
    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        b = self.block
        blocks = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return blocks.reshape(n, c * b * b, h // b, w // b)


@register("SpaceToDepth", [1, 13])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = SpaceToDepth(int(node.attributes["blocksize"]))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class ReverseSequence(nn.Module, OnnxToTorchModule):
    def __init__(self, batch_axis: int, time_axis: int) -> None:
        super().__init__()
        self.batch_axis = batch_axis
        self.time_axis = time_axis

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = x.shape[self.time_axis]
        time = torch.arange(steps, device=x.device)[:, None]  # [time, batch]
        lengths = lengths.to(x.device, torch.int64)[None, :]
        index = torch.where(time < lengths, lengths - 1 - time, time)
        shape = [1] * x.dim()
        shape[self.time_axis] = steps
        shape[self.batch_axis] = x.shape[self.batch_axis]
        if self.time_axis > self.batch_axis:
            index = index.transpose(0, 1)
        index = index.reshape(shape).expand(x.shape)
        return torch.gather(x, self.time_axis, index)


@register("ReverseSequence", [10])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = ReverseSequence(int(node.attributes.get("batch_axis", 1)), int(node.attributes.get("time_axis", 0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class Trilu(nn.Module, OnnxToTorchModule):
    def __init__(self, upper: bool) -> None:
        super().__init__()
        self.upper = upper

    def forward(self, x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        diagonal = int(k.reshape(-1)[0]) if k is not None else 0
        return torch.triu(x, diagonal) if self.upper else torch.tril(x, diagonal)


@register("Trilu", [14])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = Trilu(bool(node.attributes.get("upper", 1)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class CastLike(nn.Module, OnnxToTorchModule):
    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)


@register("CastLike", [15, 19, 21, 23, 24, 25])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    info = graph.value_info.get(node.input_values[1])
    element = info.type.tensor_type.elem_type if info is not None else 0
    if element in (TensorProto.STRING, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2):
        raise NotImplementedError(f"CastLike to {TensorProto.DataType.Name(element)}")
    return OperationConverterResult(torch_module=CastLike(), onnx_mapping=onnx_mapping_from_node(node))


class Size(nn.Module, OnnxToTorchModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@register("Size", [1, 13, 19, 21, 23, 24, 25])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return OperationConverterResult(torch_module=Size(), onnx_mapping=onnx_mapping_from_node(node))


_TORCH_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


class ScatterElements(nn.Module, OnnxToTorchModule):
    def __init__(self, axis: int, reduction: str) -> None:
        super().__init__()
        self.axis = axis
        self.reduction = reduction

    def forward(self, data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        axis = self.axis % data.dim()
        indices = indices.to(torch.int64)
        indices = torch.where(indices < 0, indices + data.shape[axis], indices)
        if self.reduction == "none":
            return torch.scatter(data, axis, indices, updates)
        return torch.scatter_reduce(data, axis, indices, updates, _TORCH_REDUCE[self.reduction], include_self=True)


@register("ScatterElements", [11, 13, 16, 18])
@register("Scatter", [9, 11])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    reduction = node.attributes.get("reduction", "none")
    if reduction not in ("none", *_TORCH_REDUCE):
        raise NotImplementedError(f"ScatterElements reduction={reduction!r}")
    module = ScatterElements(int(node.attributes.get("axis", 0)), reduction)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
