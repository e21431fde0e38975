"""Helpers shared by the converters: registration, constant inputs, axes, subgraphs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto
from onnx2torch.node_converters import registry as _registry
from onnx2torch.node_converters.registry import OperationDescription, TConverter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

ML_DOMAIN = "ai.onnx.ml"
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops

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


def upstream_converter(operation: str, version: int, domain: str = "") -> TConverter | None:
    """onnx2torch's own converter for exactly (op, version), None when it has none; call it before
    register(..., override_upstream=True) replaces that entry."""
    key = OperationDescription(domain=domain, operation_type=operation, version=version)
    return None if key in _OWN else _registry._CONVERTER_REGISTRY.get(key)


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


def optional_constant(graph: OnnxGraph, name: str | None) -> Any | None:
    """The value of a constant input (a tensor, or what a Constant node holds); None when absent or computed
    at run time."""
    if not name:
        return None
    try:
        return get_const_value(name, graph)
    except KeyError:
        return None


def constant_integers(graph: OnnxGraph, name: str | None, rank: int) -> torch.Tensor | None:
    """The input `name` as an integer tensor of `rank` dims when it is a constant; None when it is absent,
    computed at run time, floating or of another rank."""
    value = optional_constant(graph, name)
    if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.dim() != rank:
        return None
    return value


def run_upstream(node: OnnxNode, graph: OnnxGraph, converter: TConverter | None) -> OperationConverterResult:
    """onnx2torch's own converter (upstream_converter) for a node whose inputs are computed at run time."""
    if converter is None:
        raise NotImplementedError(f"{node.operation_type} with inputs computed at run time")
    return converter(node, graph)


def optional_constant_list(graph: OnnxGraph, name: str | None) -> list[Any] | None:
    """The value of a constant input as a Python list; None when absent or computed at run time."""
    value = optional_constant(graph, name)
    if value is None:
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


# The model being converted: its opsets by domain and its IR version. Converters of ops with
# subgraphs (If) convert each branch as a model of its own and need them; onnx2torch hands a
# converter only the node and its graph. Set by convert.to_torch for the length of a conversion.
_MODEL_CONTEXT: ContextVar[tuple[dict[str, int], int] | None] = ContextVar("onnxattack_model_context", default=None)


def model_context() -> tuple[dict[str, int], int] | None:
    return _MODEL_CONTEXT.get()


@contextmanager
def converting(model: ModelProto) -> Iterator[None]:
    """Within the block, model_context() gives `model`'s opsets and IR version."""
    opsets = {imp.domain or "": int(imp.version) for imp in model.opset_import}
    token = _MODEL_CONTEXT.set((opsets, int(model.ir_version)))
    try:
        yield
    finally:
        _MODEL_CONTEXT.reset(token)


def subgraphs(node: NodeProto) -> list[GraphProto]:
    """The graphs a node holds in its attributes (If's branches, Loop's and Scan's bodies)."""
    found: list[GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            found.append(attribute.g)
        elif attribute.type == AttributeProto.GRAPHS:
            found.extend(attribute.graphs)
    return found


def subgraph_free_names(graph: GraphProto) -> list[str]:
    """Values a (sub)graph reads from its enclosing scopes, in first-use order: read by its nodes, or by
    their own subgraphs, or listed as its outputs, and defined nowhere inside it."""
    defined = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} \
        | {tensor.values.name for tensor in graph.sparse_initializer}
    free: dict[str, None] = {}
    for node in graph.node:
        for name in [*node.input, *(inner for sub in subgraphs(node) for inner in subgraph_free_names(sub))]:
            if name and name not in defined:
                free[name] = None
        defined.update(node.output)
    for value in graph.output:
        if value.name not in defined:
            free[value.name] = None
    return list(free)


def node_reads(node: NodeProto) -> list[str]:
    """Every value a node reads: its inputs, and what its subgraphs read from the enclosing scope."""
    names = [name for name in node.input if name]
    for sub in subgraphs(node):
        names.extend(name for name in subgraph_free_names(sub) if name not in names)
    return names
