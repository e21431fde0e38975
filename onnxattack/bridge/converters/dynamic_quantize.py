"""Dynamic int8 quantisation as onnxruntime.quantization.quantize_dynamic emits it.

Default domain: DynamicQuantizeLinear-11, MatMulInteger-10, ConvInteger-10. com.microsoft (version 1):
DynamicQuantizeMatMul, MatMulIntegerToFloat (onnxruntime's own fusions of the former), QAttention and
DynamicQuantizeLSTM. Integers are held in float tensors, as in quantize.py; integer initializers
(int8 / uint8 weights) are cast on use.

ONNX / onnxruntime semantics (float32 arithmetic, as onnxruntime computes it):
- DynamicQuantizeLinear (uint8): lo = min(0, min x), hi = max(0, max x); scale = (hi - lo) / 255,
  or 1 when hi == lo (an all-zero input: onnxruntime gives scale 1, zero point 0, y = 0);
  zero_point = saturate(round(-lo / scale)); y = saturate(round(x / scale) + zero_point) to
  [0, 255]; round is half to even.
- MatMulInteger: (A - a_zero_point) @ (B - b_zero_point), exact int32. a_zero_point is a scalar or
  one per row of A; b_zero_point a scalar or one per column of B.
- ConvInteger: Conv of (x - x_zero_point) with (w - w_zero_point), no bias; padding therefore
  holds x_zero_point (zero after the subtraction). w_zero_point is a scalar or one per output channel.
- MatMulIntegerToFloat: MatMulInteger(A, B, a_zp, b_zp) * a_scale * b_scale + bias.
- DynamicQuantizeMatMul: A quantised by DynamicQuantizeLinear over the whole tensor, then
  MatMulIntegerToFloat with its scale and zero point. b_scale / b_zero_point: scalar or per column.
- QAttention (quantize_dynamic's form of com.microsoft Attention): the QKV projection is
  (input - input_zero_point) @ (weight - weight_zero_point) * input_scale * weight_scale + bias, the
  rest as Attention (contrib.py); weight_scale / weight_zero_point scalar or per column.
- DynamicQuantizeLSTM: an LSTM whose W [dirs, in, 4H] and R [dirs, H, 4H] are int8 / uint8
  (transposed against ONNX LSTM's), with scales and zero points per direction ([dirs]) or per
  gate column ([dirs, 4H]). X @ W quantises all of X (every step and row) dynamically in one go,
  and each step's H @ R quantises that step's hidden state over the whole batch.

Where this departs (gradients): rounding is straight-through, as in quantize.py: d y / d x is
1 / scale where x maps inside [0, 255] (always, bar the rounding at the two ends), 0 beyond. The
dynamic scale and zero point are taken as constants (gradient 0): they only move with the input's
extremes, and with them held, a quantise -> integer product -> rescale chain has exactly the
gradient of the float product with the dequantised weights. The integer products accumulate in the
graph's float type: exact in float32 while |sums| < 2**24, float rounding beyond.
"""

from __future__ import annotations

from typing import Any

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import nn

from ._common import MS_DOMAIN, register
from .contrib import Attention, attention_settings
from .conv import Conv
from .recurrent import Recurrent, parse_activations


def _float_type(*tensors: torch.Tensor | None) -> torch.dtype:
    """The float type the graph runs in: that of the first float tensor, else float32."""
    return next((t.dtype for t in tensors if t is not None and t.dtype.is_floating_point), torch.float32)


def quantize_dynamic_uint8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, scale, zero_point) of DynamicQuantizeLinear, y held in x's float type, straight-through.

    The range, scale and rounding are computed in float32 as onnxruntime does, whatever x's type;
    scale and zero point carry no gradient.
    """
    x32 = x.detach().to(torch.float32)
    zero = x32.new_zeros(())
    low = torch.minimum(x32.min(), zero) if x32.numel() else zero
    high = torch.maximum(x32.max(), zero) if x32.numel() else zero
    scale = torch.where(high == low, torch.ones_like(high), (high - low) / 255.0)
    zero_point = torch.clamp(torch.round(zero - low / scale), 0, 255)
    unclamped = torch.round(x32 / scale) + zero_point
    inside = (unclamped >= 0) & (unclamped <= 255)
    scaled = x / scale.to(x.dtype)
    straight_through = (scaled - scaled.detach()) * inside.to(x.dtype)  # value 0, gradient 1 / scale inside
    y = torch.clamp(unclamped, 0, 255).to(x.dtype) + straight_through
    return y, scale.to(x.dtype), zero_point.to(x.dtype)


def integer_matmul(a: torch.Tensor, b: torch.Tensor, a_zero_point: torch.Tensor | None,
                   b_zero_point: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """(a - a_zero_point) @ (b - b_zero_point) in `dtype`; zero points scalar, per row of a, per column of b."""
    a = a.to(dtype)
    b = b.to(dtype)
    if a_zero_point is not None:
        zp = a_zero_point.to(dtype)
        a = a - (zp.reshape(-1, 1) if zp.dim() == 1 and zp.numel() > 1 else zp)
    if b_zero_point is not None:
        b = b - b_zero_point.to(dtype)  # scalar, [N] or [..., 1, N]: broadcasts on the columns
    return torch.matmul(a, b)


class DynamicQuantizeLinear(nn.Module, OnnxToTorchModule):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return quantize_dynamic_uint8(x)


class MatMulInteger(nn.Module, OnnxToTorchModule):
    def forward(self, a: torch.Tensor, b: torch.Tensor, a_zero_point: torch.Tensor | None = None,
                b_zero_point: torch.Tensor | None = None) -> torch.Tensor:
        return integer_matmul(a, b, a_zero_point, b_zero_point, _float_type(a, b))


class MatMulIntegerToFloat(nn.Module, OnnxToTorchModule):
    def forward(self, a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                a_zero_point: torch.Tensor | None = None, b_zero_point: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        dtype = _float_type(a, b, a_scale)
        y = integer_matmul(a, b, a_zero_point, b_zero_point, dtype) * (a_scale.to(dtype) * b_scale.to(dtype))
        return y if bias is None else y + bias.to(dtype)


class DynamicQuantizeMatMul(nn.Module, OnnxToTorchModule):
    def forward(self, a: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                b_zero_point: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, scale, zero_point = quantize_dynamic_uint8(a)
        y = integer_matmul(q, b, zero_point, b_zero_point, a.dtype) * (scale * b_scale.to(a.dtype))
        return y if bias is None else y + bias.to(a.dtype)


class ConvInteger(Conv):
    """Conv of the zero-point-shifted integers (as floats): padding with 0 after the shift is padding the
    raw input with its zero point, as onnxruntime does. Pads and the convolution are Conv's."""

    def forward(self, x: torch.Tensor, w: torch.Tensor, x_zero_point: torch.Tensor | None = None,
                w_zero_point: torch.Tensor | None = None) -> torch.Tensor:
        dtype = _float_type(x, w)
        x, w = x.to(dtype), w.to(dtype)
        if x_zero_point is not None:
            x = x - x_zero_point.to(dtype).reshape(())
        if w_zero_point is not None:
            zp = w_zero_point.to(dtype)
            w = w - (zp.reshape([-1] + [1] * (w.dim() - 1)) if zp.numel() > 1 else zp.reshape(()))
        return super().forward(x, w)


class DynamicQuantizeLSTM(Recurrent):
    """An LSTM over int8 weights with its inputs quantised dynamically (see the module docstring).

    W and R reach the shared recurrence as (integers, scale, zero point) of one direction's
    [in, 4H] / [H, 4H] matrix; the products quantise their left operand on the fly.
    """

    def forward(self, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None = None,
                sequence_lens: torch.Tensor | None = None, initial_h: torch.Tensor | None = None,
                initial_c: torch.Tensor | None = None, p: torch.Tensor | None = None,
                w_scale: torch.Tensor | None = None, w_zero_point: torch.Tensor | None = None,
                r_scale: torch.Tensor | None = None, r_zero_point: torch.Tensor | None = None):
        if w_scale is None or r_scale is None or w_zero_point is None or r_zero_point is None:
            raise ValueError("DynamicQuantizeLSTM needs W_scale, W_zero_point, R_scale and R_zero_point")
        quantised_w = [(w[d], w_scale[d], w_zero_point[d]) for d in range(w.shape[0])]
        quantised_r = [(r[d], r_scale[d], r_zero_point[d]) for d in range(r.shape[0])]
        return self.recur(x, quantised_w, quantised_r, b, sequence_lens, initial_h, initial_c, p)

    def input_product(self, x: torch.Tensor, w: Any, direction: int) -> torch.Tensor:
        return _quantised_product(x, *w[direction])

    def hidden_product(self, h: torch.Tensor, r: Any, direction: int) -> torch.Tensor:
        return _quantised_product(h, *r[direction])


class QAttention(nn.Module, OnnxToTorchModule):
    """An integer QKV projection, then Attention's attend (held, not inherited: the inputs differ)."""

    def __init__(self, attention: Attention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, input_scale: torch.Tensor,
                weight_scale: torch.Tensor, mask_index: torch.Tensor | None = None,
                input_zero_point: torch.Tensor | None = None, weight_zero_point: torch.Tensor | None = None,
                past: torch.Tensor | None = None) -> torch.Tensor:
        del past  # refused at conversion
        dtype = _float_type(x, bias)
        projected = integer_matmul(x, weight, input_zero_point, weight_zero_point, dtype) \
            * (input_scale.to(dtype) * weight_scale.to(dtype)) + bias.to(dtype)
        return self.attention.attend(projected, mask_index, None)


def _quantised_product(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                       zero_point: torch.Tensor) -> torch.Tensor:
    """x @ dequantised weight, x quantised dynamically over the whole tensor as onnxruntime does."""
    q, x_scale, x_zero_point = quantize_dynamic_uint8(x)
    return integer_matmul(q, weight, x_zero_point, zero_point, x.dtype) * (x_scale * scale.to(x.dtype))


def _plain(module: nn.Module, node: OnnxNode) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


@register("DynamicQuantizeLinear", [11])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _plain(DynamicQuantizeLinear(), node)


@register("MatMulInteger", [10])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _plain(MatMulInteger(), node)


@register("ConvInteger", [10])
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    attributes = node.attributes
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise NotImplementedError(f"ConvInteger auto_pad={auto_pad!r}")
    module = ConvInteger(auto_pad, attributes.get("pads"), attributes.get("strides"), attributes.get("dilations"),
                         int(attributes.get("group", 1)))
    return _plain(module, node)


@register("MatMulIntegerToFloat", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _plain(MatMulIntegerToFloat(), node)


@register("DynamicQuantizeMatMul", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _plain(DynamicQuantizeMatMul(), node)


@register("QAttention", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    return _plain(QAttention(Attention(**attention_settings(node, past_inputs=(8,)))), node)


@register("DynamicQuantizeLSTM", [1], MS_DOMAIN)
def _(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    del graph
    attributes = node.attributes
    if attributes.get("input_forget", 0):
        raise NotImplementedError("DynamicQuantizeLSTM with input_forget=1")
    direction = attributes.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NotImplementedError(f"DynamicQuantizeLSTM direction={direction!r}")
    directions = 2 if direction == "bidirectional" else 1
    activations = parse_activations("LSTM", attributes.get("activations"), attributes.get("activation_alpha", []),
                                    attributes.get("activation_beta", []), directions)
    clip = attributes.get("clip")
    module = DynamicQuantizeLSTM("LSTM", int(attributes["hidden_size"]), direction, activations,
                                 None if clip is None else float(clip), False, 0, len(node.output_values))
    return _plain(module, node)
