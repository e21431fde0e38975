"""GroupNormalization-18/21 and LpNormalization-1/22.

GroupNormalization: x [N, C, ...] split into num_groups groups of C / num_groups channels;
each (sample, group) normalised by its mean and biased variance: (x - mean) / sqrt(var + epsilon).
Version 18 then applies scale and bias of shape [num_groups] (one per group; the spec's
mistake that version 21 fixed), version 21 of shape [C] (per channel). stash_type=1 (21)
asks for float32 statistics: computed in the input's float type here (float32 or wider).
LpNormalization: y = x / ||x||_p along `axis` (default -1), p in {1, 2}, no epsilon.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import register


class GroupNormalization(nn.Module, OnnxToTorchModule):
    def __init__(self, num_groups: int, epsilon: float, per_channel: bool) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.epsilon = epsilon
        self.per_channel = per_channel

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        grouped = x.reshape(batch, self.num_groups, -1)
        mean = grouped.mean(dim=-1, keepdim=True)
        variance = grouped.var(dim=-1, unbiased=False, keepdim=True)
        normalised = ((grouped - mean) / torch.sqrt(variance + self.epsilon)).reshape(x.shape)
        if not self.per_channel:
            scale = scale.repeat_interleave(channels // self.num_groups)
            bias = bias.repeat_interleave(channels // self.num_groups)
        shape = [1, channels] + [1] * (x.dim() - 2)
        return normalised * scale.reshape(shape) + bias.reshape(shape)


def _group_norm(per_channel: bool):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        del graph
        module = GroupNormalization(int(node.attributes["num_groups"]), float(node.attributes.get("epsilon", 1e-5)),
                                    per_channel)
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))

    return convert


register("GroupNormalization", [18])(_group_norm(per_channel=False))
register("GroupNormalization", [21])(_group_norm(per_channel=True))


class LpNormalization(nn.Module, OnnxToTorchModule):
    def __init__(self, axis: int, p: int) -> None:
        super().__init__()
        self.axis = axis
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 1:
            norm = torch.sum(torch.abs(x), dim=self.axis, keepdim=True)
        else:
            norm = torch.sqrt(torch.sum(x * x, dim=self.axis, keepdim=True))
        return x / norm


@register("LpNormalization", [1, 22])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    p = int(node.attributes.get("p", 2))
    if p not in (1, 2):
        raise NotImplementedError(f"LpNormalization p={p}")
    module = LpNormalization(int(node.attributes.get("axis", -1)), p)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))
