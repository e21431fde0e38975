"""Reshape: a constant target shape held by the module; Reshape-19/21 (allowzero honoured) computed at run time.

onnx2torch's Reshape reads its shape tensor on every call (a comparison, a sync to test it, a Python int per
size): 14-17 us a call against 3-4 us for sizes held as Python ints, measured on the [32, 16, 1, 1] flatten that
ends the zoo CNN; exporters write a constant shape for most flattens and head splits. A shape computed at
run time (Shape -> Gather -> Concat chains of dynamic-batch exports) stays with onnx2torch for versions 5-14
and with `Reshape` below for 19/21.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.registry import TConverter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import constant_integers, mapping, register, run_upstream, upstream_converter


class Reshape(nn.Module, OnnxToTorchModule):
    def __init__(self, allow_zero: bool) -> None:
        super().__init__()
        self.allow_zero = allow_zero

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        sizes = [int(size) for size in shape.tolist()]
        if not self.allow_zero:
            sizes = [x.shape[i] if size == 0 else size for i, size in enumerate(sizes)]
        return torch.reshape(x, sizes)


class ConstantShapeReshape(nn.Module, OnnxToTorchModule):
    """Reshape to sizes known at conversion; a 0 copies the input's size at that position unless allowzero."""

    def __init__(self, sizes: tuple[int, ...], allow_zero: bool) -> None:
        super().__init__()
        self.sizes = sizes
        self.copied = frozenset() if allow_zero else frozenset(i for i, size in enumerate(sizes) if size == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.copied:
            return torch.reshape(x, self.sizes)
        return torch.reshape(x, [x.shape[i] if i in self.copied else size for i, size in enumerate(self.sizes)])


def _dynamic(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = Reshape(allow_zero=bool(node.attributes.get("allowzero", 0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _reshape(run_time: TConverter | None) -> TConverter:
    """The converter of one Reshape version: a constant shape held by the module, else `run_time`'s."""

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        names = list(node.input_values)
        shape = constant_integers(graph, names[1] if len(names) > 1 else None, rank=1)
        if shape is None:
            return run_upstream(node, graph, run_time)
        module = ConstantShapeReshape(tuple(int(size) for size in shape.tolist()),
                                      allow_zero=bool(node.attributes.get("allowzero", 0)))
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping(names[:1], node))

    return convert


_UPSTREAM = {version: upstream_converter("Reshape", version) for version in (5, 13, 14)}
for _version, _converter in _UPSTREAM.items():
    register("Reshape", [_version], override_upstream=True)(_reshape(_converter))
register("Reshape", [19, 21])(_reshape(_dynamic))
