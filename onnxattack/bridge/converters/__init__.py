"""The project's own onnx2torch converters for ops and op versions onnx2torch 1.5.15 lacks.

Importing this package registers them in onnx2torch's own registry (once per process),
through _common.register: a version onnx2torch already converts is left to it, except where
its converter is known to be wrong or too narrow (Pad; Clip, whose bounds it takes only as
constants; LayerNormalization-17, which needs value_info shapes) and is replaced on purpose.
Conv, ConvTranspose, MaxPool and AveragePool are replaced too, but hand the cases onnx2torch
handles back to its converter (upstream_converter, looked up before the replacement). One module
per op family:
- reduce.py: Reduce*-18/20 (axes moved from an attribute to an input)
- reshape.py: Reshape with a constant shape as a static module (every version, replacing onnx2torch's,
  which reads the shape tensor on every call); Reshape-19/21 (allowzero honoured)
- indexing.py: Squeeze-13/21 with constant axes and Gather with a constant scalar index, as static
  modules (replacing onnx2torch's, which read the constant tensor on every call)
- activations.py: Gelu-20, Mish, ThresholdedRelu, Shrink, Clip-11/12/13 (bounds computed in the graph)
- structure.py: Split-18 (num_outputs), Pad (every version; reflect/edge/wrap on any dim)
- padding.py: explicit pads from auto_pad / pads and the input's size at run time (shared)
- conv.py: Conv, ConvTranspose (auto_pad SAME_*, weights computed in the graph, asymmetric
  pads and output_shape for ConvTranspose)
- pool.py: MaxPool, AveragePool, LpPool (auto_pad SAME_*, asymmetric pads, dilations, ceil_mode)
- recurrent.py: LSTM, GRU, RNN
- quantize.py: QuantizeLinear, DequantizeLinear (quantised integers as float tensors)
- dynamic_quantize.py: onnxruntime quantize_dynamic's DynamicQuantizeLinear, MatMulInteger,
  ConvInteger and com.microsoft DynamicQuantizeMatMul, MatMulIntegerToFloat, QAttention, DynamicQuantizeLSTM
- contrib.py: onnxruntime transformer-optimiser ops: com.microsoft FusedMatMul, FastGelu, BiasGelu,
  Gelu, SkipLayerNormalization, Attention (no past state); LayerNormalization-1..17 (17 replaces
  onnx2torch's, which needs value_info shapes)
- normalization.py: GroupNormalization, LpNormalization
- misc.py: GlobalMaxPool, Upsample, SpaceToDepth, ReverseSequence, Trilu, CastLike,
  ScatterElements
- control.py: If (both branches converted as models of their own, chosen per call)
- ml.py: ai.onnx.ml Scaler, Normalizer, LinearClassifier, LinearRegressor
- aliases.py: version bumps that only widened the accepted types; they reuse the
  previous version's converter, with a guard where an attribute changed meaning.

Why onnx2torch is pinned (pyproject.toml: onnx2torch==1.5.15): this package reaches into
onnx2torch beyond its decorator API: the registry dict (node_converters.registry.
_CONVERTER_REGISTRY, written by register() to skip or replace entries), OnnxGraph.
generate_node_name (wrapped in _common to make ai.onnx.ml module names legal), the
OnnxNode / OnnxGraph / OperationConverterResult / OnnxMapping types, get_const_value, and the
way convert() turns '' inputs into keyword arguments named after forward()'s parameters.
convert.py also finds a failing node from the OnnxNode held in a traceback frame. When moving
the pin, check: (1) those names still exist with the same meaning; (2) which (op, version)
pairs the new release converts itself (register() then leaves them to it, silently: run the
tests/test_converters*.py one-node tests, which hit onnx2torch's converter where it has one,
and decide per op whether to override); (3) whether its Pad still maps reflect/edge onto
torch's pad (if fixed, the override in structure.py may go); (4) whether the dotted-domain
naming bug is fixed (then _patch_node_naming is a harmless no-op on dot-free names); (5) whether
its Conv / ConvTranspose / pools still take the signature conv.py and pool.py hand back to them.
"""

from . import (  # noqa: F401
    activations,
    aliases,
    contrib,
    control,
    conv,
    dynamic_quantize,
    indexing,
    misc,
    ml,
    normalization,
    pool,
    quantize,
    recurrent,
    reduce,
    reshape,
    structure,
)
