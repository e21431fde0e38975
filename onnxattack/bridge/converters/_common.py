"""Helpers shared by the converters: registration, constant inputs, axes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from onnx2torch.node_converters import registry as _registry
from onnx2torch.node_converters.registry import OperationDescription, TConverter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, get_const_value

ML_DOMAIN = "ai.onnx.ml"

# Every (domain, op, version) this package put into onnx2torch's registry.
_OWN: set[OperationDescription] = set()


def register(operation: str, versions: Iterable[int], domain: str = "", *,
             override_upstream: bool = False) -> Callable[[TConverter], TConverter]:
    """Register a converter for `operation` at each of `versions` in onnx2torch's registry.

    A version that onnx2torch itself already converts is left to it (a newer onnx2torch may
    bring converters for versions 1.5.15 lacks). `override_upstream=True` replaces onnx2torch's
    entry instead, for ops whose upstream converter is known to be wrong (Pad: reflect/edge only
    on the last 1-3 dims, no wrap). onnx2torch's add_converter refuses duplicates, so the
    replacement writes the registry dict directly, on purpose.
    """

    def decorate(converter: TConverter) -> TConverter:
        for version in versions:
            key = OperationDescription(domain=domain, operation_type=operation, version=version)
            if key in _registry._CONVERTER_REGISTRY and key not in _OWN and not override_upstream:
                continue
            _registry._CONVERTER_REGISTRY[key] = converter
            _OWN.add(key)
        return converter

    return decorate


def own_registrations() -> frozenset[OperationDescription]:
    return frozenset(_OWN)


def _patch_node_naming() -> None:
    """Workaround: onnx2torch 1.5.15 names a node's torch module '<domain>/<name or op>'.

    For a non-default domain ('ai.onnx.ml') the dots make torch's add_module refuse the name
    ("module name can't contain '.'"), so no ai.onnx.ml converter could ever be used. The one
    place the name is made is OnnxGraph.generate_node_name: wrap it to turn dots into '_'.
    Default-domain names are unchanged (onnx2torch already replaces dots in node names).
    """
    original = OnnxGraph.generate_node_name
    if getattr(original, "_dots_replaced", False):
        return

    def generate_node_name(node) -> str:
        return original(node).replace(".", "_")

    setattr(generate_node_name, "_dots_replaced", True)  # noqa: B010 (a marker on a function object)
    OnnxGraph.generate_node_name = staticmethod(generate_node_name)


_patch_node_naming()


def optional_constant_list(graph: OnnxGraph, name: str | None) -> list[Any] | None:
    """The value of a constant input as a Python list; None when absent or computed at run time."""
    if not name:
        return None
    try:
        value = get_const_value(name, graph)
    except KeyError:
        return None
    values = value.tolist() if hasattr(value, "tolist") else value
    return values if isinstance(values, list) else [values]


def inputs_padded(node: OnnxNode, count: int) -> list[str]:
    """The node's input names, '' for the optional ones left out."""
    names = list(node.input_values)
    return names + [""] * (count - len(names))


def mapping(inputs: Iterable[str], node: OnnxNode) -> OnnxMapping:
    return OnnxMapping(inputs=tuple(inputs), outputs=node.output_values)


def normalise_axes(axes: list[int], rank: int) -> list[int]:
    """Negative axes made positive, order kept (Pad's pads follow the order of its axes)."""
    return [axis + rank if axis < 0 else axis for axis in axes]
