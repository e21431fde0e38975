"""Ops from onnxruntime's transformer optimiser, as its CPU kernels compute them (com.microsoft version 1).

- FusedMatMul: Y = alpha * op(A) @ op(B), op transposing the last two dims where transA / transB is
  set (1-D operands are never transposed). transBatchA / transBatchB are refused.
- FastGelu: the tanh approximation of GELU, of X + bias when bias is given:
  y = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
- BiasGelu: exact (erf) GELU of A + B. Gelu: exact GELU of X.
- SkipLayerNormalization: s = input + skip (+ bias); output = (s - mean) / sqrt(var + epsilon) * gamma
  (+ beta), mean and biased variance over the last dim, epsilon 1e-12 by default. skip may be
  [B, S, H], [1, S, H] or [S, H]. Optional outputs: mean and inv_std_var ([B, S, 1]) and s itself.
- LayerNormalization (default domain): what onnxruntime's optimiser fuses the ReduceMean / Sub / Pow /
  Sqrt chain into. Below version 17 it is onnxruntime's own schema, written into models of opset < 17
  (ONNX's checker refuses those); version 17 replaces onnx2torch's converter, which needs the input's
  shape in value_info (optimised graphs have none: KeyError) and gives only Y. Normalised over the
  dims from `axis` (default -1), epsilon 1e-5; optional outputs Mean and InvStdDev (kept dims of size 1).
- Attention (self-attention, BERT / GPT-2 style): Q, K, V = input @ weights + bias, split by
  qkv_hidden_sizes (default three equal parts), num_heads heads; softmax(Q K^T * scale + attention_bias
  + mask) V, scale 1 / sqrt(head size) by default. mask_index: raw [B, T] or [B, S, T] (0 masks: adds
  mask_filter_value, default -10000), [B] valid lengths (right padding) or [2B] ends then starts (left
  padding); unidirectional adds mask_filter_value above the diagonal. Refused: past / present state,
  past_sequence_length, do_rotary.
All are smooth (or piecewise linear) in their float inputs: plain autograd gradients.
"""

from __future__ import annotations

import math

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import MS_DOMAIN, register


def _last_two_swapped(x: torch.Tensor, swap: bool) -> torch.Tensor:
    return x.transpose(-1, -2) if swap and x.dim() >= 2 else x


class FusedMatMul(nn.Module, OnnxToTorchModule):
    def __init__(self, alpha: float, trans_a: bool, trans_b: bool) -> None:
        super().__init__()
        self.alpha = alpha
        self.trans_a = trans_a
        self.trans_b = trans_b

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        product = torch.matmul(_last_two_swapped(a, self.trans_a), _last_two_swapped(b, self.trans_b))
        return product if self.alpha == 1.0 else product * self.alpha


class FastGelu(nn.Module, OnnxToTorchModule):
    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if bias is not None:
            x = x + bias
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
        return 0.5 * x * (1.0 + torch.tanh(inner))


class BiasGelu(nn.Module, OnnxToTorchModule):
    def forward(self, a: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.gelu(a if bias is None else a + bias)


class SkipLayerNormalization(nn.Module, OnnxToTorchModule):
    def __init__(self, epsilon: float, outputs: int) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.outputs = outputs

    def forward(self, x: torch.Tensor, skip: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None = None,
                bias: torch.Tensor | None = None):
        total = x + skip
        if bias is not None:
            total = total + bias
        mean = total.mean(dim=-1, keepdim=True)
        variance = (total - mean).pow(2).mean(dim=-1, keepdim=True)
        inverse_std = torch.rsqrt(variance + self.epsilon)
        y = (total - mean) * inverse_std * gamma
        if beta is not None:
            y = y + beta
        results = (y, mean, inverse_std, total)[: self.outputs]
        return results[0] if self.outputs == 1 else results


class LayerNormalization(nn.Module, OnnxToTorchModule):
    def __init__(self, axis: int, epsilon: float, outputs: int) -> None:
        super().__init__()
        self.axis = axis
        self.epsilon = epsilon
        self.outputs = outputs

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        dims = tuple(range(self.axis % x.dim(), x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        inverse_std = torch.rsqrt((x - mean).pow(2).mean(dim=dims, keepdim=True) + self.epsilon)
        y = (x - mean) * inverse_std * scale
        if bias is not None:
            y = y + bias
        results = (y, mean, inverse_std)[: self.outputs]
        return results[0] if self.outputs == 1 else results


class Attention(nn.Module, OnnxToTorchModule):
    def __init__(self, heads: int, sizes: list[int] | None, scale: float | None, unidirectional: bool,
                 mask_filter_value: float) -> None:
        super().__init__()
        self.heads = heads
        self.sizes = sizes
        self.scale = scale
        self.unidirectional = unidirectional
        self.mask_filter_value = mask_filter_value

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, N * d] -> [B, N, S, d]."""
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def _mask(self, mask_index: torch.Tensor, batch: int, steps: int, dtype: torch.dtype) -> torch.Tensor:
        """The additive mask [B, 1 or S, T] of mask_index in any of its four layouts."""
        positions = torch.arange(steps, device=mask_index.device)
        if mask_index.dim() == 1 and mask_index.numel() == batch:  # valid lengths (right padding)
            keep = positions[None, :] < mask_index[:, None]
        elif mask_index.dim() == 1:  # exclusive ends, then inclusive starts (left padding)
            ends, starts = mask_index[:batch], mask_index[batch:]
            keep = (positions[None, :] < ends[:, None]) & (positions[None, :] >= starts[:, None])
        else:
            keep = mask_index != 0
        keep = keep if keep.dim() == 3 else keep[:, None, :]
        return (~keep).to(dtype) * self.mask_filter_value

    def forward(self, x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None = None,
                mask_index: torch.Tensor | None = None, past: torch.Tensor | None = None,
                attention_bias: torch.Tensor | None = None) -> torch.Tensor:
        del past  # refused at conversion
        projected = torch.matmul(x, weights) if bias is None else torch.matmul(x, weights) + bias
        return self.attend(projected, mask_index, attention_bias)

    def attend(self, projected: torch.Tensor, mask_index: torch.Tensor | None,
               attention_bias: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention of the projected [B, S, Q + K + V] (QAttention projects in integers)."""
        batch, steps = projected.shape[0], projected.shape[1]
        sizes = self.sizes or [projected.shape[-1] // 3] * 3
        q, k, v = (self._split_heads(part) for part in torch.split(projected, sizes, dim=-1))
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        if mask_index is not None:
            scores = scores + self._mask(mask_index, batch, steps, scores.dtype)[:, None]
        if self.unidirectional:
            later = torch.ones(steps, steps, dtype=torch.bool, device=projected.device).triu(1)
            scores = scores + later.to(scores.dtype) * self.mask_filter_value
        if attention_bias is not None:
            scores = scores + attention_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, N, S, d_v]
        return context.transpose(1, 2).reshape(batch, steps, -1)


def _plain(module: nn.Module, node: OnnxNode) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


@register("FusedMatMul", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    attributes = node.attributes
    if attributes.get("transBatchA", 0) or attributes.get("transBatchB", 0):
        raise NotImplementedError("FusedMatMul with transBatchA / transBatchB")
    module = FusedMatMul(float(attributes.get("alpha", 1.0)), bool(attributes.get("transA", 0)),
                         bool(attributes.get("transB", 0)))
    return _plain(module, node)


@register("FastGelu", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _plain(FastGelu(), node)


@register("BiasGelu", [1], MS_DOMAIN)
@register("Gelu", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _plain(BiasGelu(), node)


@register("SkipLayerNormalization", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    module = SkipLayerNormalization(float(node.attributes.get("epsilon", 1e-12)), len(node.output_values))
    return _plain(module, node)


@register("LayerNormalization", range(1, 18), override_upstream=True)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    attributes = node.attributes
    module = LayerNormalization(int(attributes.get("axis", -1)), float(attributes.get("epsilon", 1e-5)),
                                len(node.output_values))
    return _plain(module, node)


def attention_settings(node: OnnxNode, past_inputs: tuple[int, ...]) -> dict:
    """Attention's / QAttention's constructor arguments; NotImplementedError for past state or rotary."""
    attributes = node.attributes
    if attributes.get("do_rotary", 0):
        raise NotImplementedError(f"{node.operation_type} with do_rotary=1")
    if len([name for name in node.output_values if name]) > 1:
        raise NotImplementedError(f"{node.operation_type} with a present output")
    inputs = list(node.input_values) + [""] * 10
    if any(inputs[index] for index in past_inputs):
        raise NotImplementedError(f"{node.operation_type} with a past state or past_sequence_length")
    sizes = attributes.get("qkv_hidden_sizes")
    scale = attributes.get("scale")
    return {"heads": int(attributes["num_heads"]), "sizes": [int(v) for v in sizes] if sizes else None,
            "scale": None if scale is None or scale == 0 else float(scale),
            "unidirectional": bool(attributes.get("unidirectional", 0)),
            "mask_filter_value": float(attributes.get("mask_filter_value", -10000.0))}


@register("Attention", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _plain(Attention(**attention_settings(node, past_inputs=(4, 6))), node)
