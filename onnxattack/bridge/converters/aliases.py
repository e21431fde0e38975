"""Op versions that only widened the accepted element types (bfloat16, float8, int4, ...).

For float and integer tensors their meaning is that of the previous version, so they
reuse onnx2torch's converter for it. A guard refuses an attribute whose new meaning the
old converter would silently ignore.
"""

from __future__ import annotations

from collections.abc import Callable

from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from ._common import register

Guard = Callable[[OnnxNode], str | None]


def _no_antialias(node: OnnxNode) -> str | None:
    if node.attributes.get("antialias", 0):
        return "Resize with antialias=1"
    if node.attributes.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "Resize with keep_aspect_ratio_policy other than stretch"
    return None


def _plain_scatter(node: OnnxNode) -> str | None:
    reduction = node.attributes.get("reduction", "none")
    return None if reduction in ("none", "add", "mul") else f"ScatterND reduction={reduction}"


# (op, new versions, version whose converter serves them, guard)
ALIASES: list[tuple[str, tuple[int, ...], int, Guard | None]] = [
    ("Cast", (19, 21, 23, 24, 25), 13, None),
    ("Constant", (19, 21, 23, 24, 25), 13, None),
    ("ConstantOfShape", (20, 21, 23, 24, 25), 9, None),
    ("Identity", (19, 21, 23, 24, 25), 16, None),
    ("Shape", (19, 21, 23, 24, 25), 15, None),
    ("Flatten", (21, 23, 24, 25), 13, None),
    ("Squeeze", (23, 24, 25), 21, None),
    ("Unsqueeze", (21, 23, 24, 25), 13, None),
    ("Transpose", (21, 23, 24, 25), 13, None),
    ("Equal", (19,), 13, None),
    ("Gemm", (7,), 9, None),  # opset 7-8 exports; 9 only added integer types
    ("GlobalAveragePool", (22,), 1, None),
    ("Dropout", (22,), 13, None),
    ("InstanceNormalization", (22,), 6, None),
    ("HardSigmoid", (22,), 6, None),
    ("HardSwish", (22,), 14, None),
    ("Elu", (22,), 6, None),
    ("Selu", (22,), 6, None),
    ("Softplus", (22,), 1, None),
    ("Softsign", (22,), 1, None),
    ("Round", (22,), 11, None),
    ("Sin", (22,), 7, None),
    ("Cos", (22,), 7, None),
    ("Resize", (18, 19), 13, _no_antialias),
    ("ScatterND", (18,), 16, _plain_scatter),
]


def _make_alias(operation: str, old_version: int, guard: Guard | None):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        if guard is not None:
            reason = guard(node)
            if reason:
                raise NotImplementedError(reason)
        return get_converter(operation, old_version)(node, graph)

    return convert


for _operation, _versions, _old_version, _guard in ALIASES:
    _converter = _make_alias(_operation, _old_version, _guard)
    register(_operation, _versions)(_converter)
