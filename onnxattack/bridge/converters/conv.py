"""Conv and ConvTranspose (every version) where onnx2torch's converter stops.

onnx2torch 1.5.15 converts them only with weights (and bias) held in initializers, auto_pad
NOTSET or VALID, and, for ConvTranspose, symmetric pads and no output_shape (which it ignores).
Those cases stay with it; the rest (auto_pad SAME_UPPER / SAME_LOWER from Keras, tf2onnx and
keras2onnx exports, weights computed in the graph, asymmetric or output_shape-driven
ConvTranspose) convert here to torch's functional convolutions, pads computed from the input's
size at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult
from torch import nn
from torch.nn import functional

from ._common import mapping, register, upstream_converter
from .padding import SAME, check_auto_pad, explicit_pairs, split_same, torch_order, window_pads

_CONV: dict[int, Callable[..., torch.Tensor]] = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}
_CONV_TRANSPOSE: dict[int, Callable[..., torch.Tensor]] = {
    1: functional.conv_transpose1d, 2: functional.conv_transpose2d, 3: functional.conv_transpose3d}


def _per_dim(values: Sequence[int] | None, rank: int) -> list[int]:
    return [int(v) for v in values] if values else [1] * rank


def _rank(weight: torch.Tensor) -> int:
    rank = weight.dim() - 2
    if rank not in _CONV:
        raise NotImplementedError(f"convolution with {rank} spatial dims")
    return rank


class Conv(nn.Module, OnnxToTorchModule):
    """ONNX Conv: explicit pads from auto_pad / pads, then an unpadded torch convolution."""

    def __init__(self, auto_pad: str, pads: list[int] | None, strides: list[int] | None,
                 dilations: list[int] | None, group: int) -> None:
        super().__init__()
        self.auto_pad = auto_pad
        self.pads = pads
        self.strides = strides
        self.dilations = dilations
        self.group = group

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rank = _rank(weight)
        strides, dilations = _per_dim(self.strides, rank), _per_dim(self.dilations, rank)
        pairs = window_pads(self.auto_pad, self.pads, list(x.shape[2:]), list(weight.shape[2:]), strides, dilations)
        if any(pair != (0, 0) for pair in pairs):
            x = functional.pad(x, torch_order(pairs))
        return _CONV[rank](x, weight, bias, strides, 0, dilations, self.group)


class ConvTranspose(nn.Module, OnnxToTorchModule):
    """ONNX ConvTranspose: the full transposed convolution, output_padding added at the end, then the
    pads cropped (from pads, from output_shape, or so that SAME makes size * stride)."""

    def __init__(self, auto_pad: str, pads: list[int] | None, strides: list[int] | None,
                 dilations: list[int] | None, group: int, output_padding: list[int] | None,
                 output_shape: list[int] | None) -> None:
        super().__init__()
        self.auto_pad = auto_pad
        self.pads = pads
        self.strides = strides
        self.dilations = dilations
        self.group = group
        self.output_padding = output_padding
        self.output_shape = output_shape

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rank = _rank(weight)
        strides, dilations = _per_dim(self.strides, rank), _per_dim(self.dilations, rank)
        extra = [int(v) for v in self.output_padding] if self.output_padding else [0] * rank
        y = _CONV_TRANSPOSE[rank](x, weight, None, strides, 0, 0, self.group, dilations)
        crops = self._crops(list(x.shape[2:]), list(y.shape[2:]), strides, extra, rank)
        adjust = [(-begin, more - end) for (begin, end), more in zip(crops, extra, strict=True)]
        if any(pair != (0, 0) for pair in adjust):
            y = functional.pad(y, torch_order(adjust))
        return y if bias is None else y + bias.reshape(1, -1, *[1] * rank)

    def _crops(self, sizes: list[int], full: list[int], strides: list[int], extra: list[int],
               rank: int) -> list[tuple[int, int]]:
        if self.output_shape:
            targets = [int(v) for v in self.output_shape[-rank:]]
        elif self.auto_pad in SAME:
            targets = [size * stride for size, stride in zip(sizes, strides, strict=True)]
        elif self.auto_pad == "VALID":
            return [(0, 0)] * rank
        else:
            return explicit_pairs(self.pads, rank)
        # Spec and onnxruntime: SAME_UPPER crops the odd element at the end, anything else at the beginning.
        side = "SAME_UPPER" if self.auto_pad == "SAME_UPPER" else "SAME_LOWER"
        return [split_same(length + more - target, side)
                for length, more, target in zip(full, extra, targets, strict=True)]


def _computed(node: OnnxNode, graph: OnnxGraph) -> bool:
    return any(name and name not in graph.initializers for name in node.input_values[1:])


def _symmetric(pads: Sequence[int] | None) -> bool:
    half = len(pads or []) // 2
    return not pads or list(pads[:half]) == list(pads[half:])


_UPSTREAM = {operation: upstream_converter(operation, 11) for operation in ("Conv", "ConvTranspose")}


@register("Conv", [1, 11, 22], override_upstream=True)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attributes = node.attributes
    auto_pad = check_auto_pad(attributes.get("auto_pad", "NOTSET"))
    upstream = _UPSTREAM["Conv"]
    if upstream is not None and auto_pad not in SAME and not _computed(node, graph):
        return upstream(node, graph)
    module = Conv(auto_pad, attributes.get("pads"), attributes.get("strides"), attributes.get("dilations"),
                  int(attributes.get("group", 1)))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node.input_values, node))


@register("ConvTranspose", [1, 11, 22], override_upstream=True)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    attributes = node.attributes
    auto_pad = check_auto_pad(attributes.get("auto_pad", "NOTSET"))
    upstream = _UPSTREAM["ConvTranspose"]
    if upstream is not None and auto_pad not in SAME and not _computed(node, graph) \
            and "output_shape" not in attributes and _symmetric(attributes.get("pads")):
        return upstream(node, graph)
    module = ConvTranspose(auto_pad, attributes.get("pads"), attributes.get("strides"), attributes.get("dilations"),
                           int(attributes.get("group", 1)), attributes.get("output_padding"),
                           attributes.get("output_shape"))
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node.input_values, node))
