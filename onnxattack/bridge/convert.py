"""onnx2torch conversion with the project's converters, and the fidelity check against onnxruntime."""

from __future__ import annotations

import traceback

import numpy as np
import onnx
import torch
from onnx import defs
from onnx2torch import convert as onnx2torch_convert
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode

from ..errors import ConversionError, FidelityError
from ..runtime import OrtScorer
from ..scores import ScoreReader
from . import converters  # noqa: F401  (registers the project's converters)
from .converters._common import converting, subgraphs
from .normalise import (
    drop_zero_initial_states,
    explicit_squeeze_axes,
    fold_constant_dequantize,
    split_multi_output_results,
)


def _op_version(node: onnx.NodeProto, opsets: dict[str, int]) -> int:
    domain = node.domain or ""
    opset = opsets.get(domain, opsets.get("ai.onnx", 1)) if domain in ("", "ai.onnx") else opsets.get(domain, 1)
    try:
        return defs.get_schema(node.op_type, max_inclusive_version=opset, domain=domain).since_version
    except (RuntimeError, defs.SchemaError):
        return opset


def _op_name(node: onnx.NodeProto, opsets: dict[str, int]) -> str:
    prefix = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
    return f"{prefix}{node.op_type}-{_op_version(node, opsets)}"


def _describe(node: onnx.NodeProto, opsets: dict[str, int]) -> str:
    """'Pad-13 (node 'pad_1')': the op, its version and the node's name where it has one."""
    return _op_name(node, opsets) + (f" (node {node.name!r})" if node.name else "")


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {imp.domain or "": int(imp.version) for imp in model.opset_import}


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes and those of every subgraph they hold (If branches, Loop bodies), depth first."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for sub in subgraphs(node):
            nodes.extend(_all_nodes(sub))
    return nodes


def blocking_ops(model: onnx.ModelProto) -> list[str]:
    """Every op (with its version) that has no converter, e.g. 'ai.onnx.ml.Scaler-1', subgraphs' included."""
    opsets = _opsets(model)
    missing: set[str] = set()
    for node in _all_nodes(model.graph):
        try:
            get_converter(node.op_type, _op_version(node, opsets), node.domain or "")
        except NotImplementedError:
            missing.add(_op_name(node, opsets))
    return sorted(missing)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:300]}"


def _failing_onnx_node(exc: BaseException) -> onnx.NodeProto | None:
    """The node onnx2torch was converting when `exc` was raised (innermost frame holding one).

    Converters take the node as an OnnxNode argument and onnx2torch's convert loop holds it in
    a local, so a traceback frame names it both for a converter's failure and for onnx2torch's
    own assembly of the module around it.
    """
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in frame.f_locals.values():
            if isinstance(value, OnnxNode):
                found = value.proto
                break
    return found


# Set on every converted node's torch module: which ONNX node it computes (a plain string).
NODE_TAG = "onnxattack_onnx_node"


def _tag_modules(module: torch.nn.Module, model: onnx.ModelProto) -> None:
    opsets = _opsets(model)
    for name, onnx_node in OnnxGraph(model.graph).nodes.items():
        try:
            submodule = module.get_submodule(name)
        except AttributeError:
            continue
        object.__setattr__(submodule, NODE_TAG, _describe(onnx_node.proto, opsets))


def forward_failure(exc: BaseException) -> ConversionError:
    """A ConversionError naming the ONNX node whose torch module raised `exc` in a forward."""
    where = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        tag = getattr(owner, NODE_TAG, None) if isinstance(owner, torch.nn.Module) else None
        if isinstance(tag, str):
            where = tag  # keep the innermost
    at = f" at {where}" if where else ""
    return ConversionError(f"the converted torch graph fails in its forward{at}: {_one_line(exc)}",
                           blocking_ops=[where.split(" ")[0]] if where else [])


def to_torch(model: onnx.ModelProto) -> torch.nn.Module:
    """A frozen, eval-mode torch graph of `model`; ConversionError names what blocks it."""
    try:
        model = drop_zero_initial_states(
            explicit_squeeze_axes(fold_constant_dequantize(split_multi_output_results(model))))
    except Exception as exc:  # a malformed graph: say so in one line, never a traceback
        raise ConversionError(f"the score graph cannot be prepared for conversion: {_one_line(exc)}") from None
    missing = blocking_ops(model)
    if missing:
        raise ConversionError(f"the score graph cannot become a torch graph: no converter for "
                              f"{', '.join(missing)}", blocking_ops=missing)
    try:
        with converting(model):  # converters of ops with subgraphs (If) read the model's opsets
            module = onnx2torch_convert(model)
    except Exception as exc:  # converters raise NotImplementedError; onnx2torch KeyError, ValueError, ...
        node = _failing_onnx_node(exc)
        if node is None:
            raise ConversionError(f"onnx2torch failed on the score graph: {_one_line(exc)}") from None
        opsets = _opsets(model)
        raise ConversionError(f"the score graph cannot become a torch graph: {_describe(node, opsets)} does not "
                              f"convert: {_one_line(exc)}", blocking_ops=[_op_name(node, opsets)]) from None
    module.eval()  # at once: BatchNorm must never see a forward in training mode
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    try:
        _tag_modules(module, model)
    except Exception:  # the tags only improve forward-failure messages
        pass
    return module


def max_score_difference(torch_scores: np.ndarray, ort_scores: np.ndarray) -> tuple[float, tuple[int, int]]:
    torch64, ort64 = torch_scores.astype(np.float64), ort_scores.astype(np.float64)
    with np.errstate(invalid="ignore"):
        difference = np.abs(torch64 - ort64)
    # NaN where both give NaN, or the same infinity, is agreement (a log of a negative input, ...)
    same_special = (np.isnan(torch64) & np.isnan(ort64)) | (np.isinf(torch64) & (torch64 == ort64))
    difference = np.where(same_special, 0.0, np.where(np.isfinite(difference), difference, np.inf))
    where = np.unravel_index(int(np.argmax(difference)), difference.shape)
    return float(difference[where]), (int(where[0]), int(where[1]))


def check_fidelity(graph: torch.nn.Module, reader: ScoreReader, scorer: OrtScorer, probe: np.ndarray,
                   tolerance: float, torch_dtype: torch.dtype, device: torch.device) -> float:
    """Max |torch - onnxruntime| over the probe's scores; FidelityError beyond the tolerance."""
    ort_scores = scorer(probe)
    with torch.no_grad():
        try:
            z = graph(torch.as_tensor(probe, dtype=torch_dtype, device=device))
        except Exception as exc:  # a converter's module that fails on real data: name its node
            raise forward_failure(exc) from None
        torch_scores = reader.to_scores(z).float().cpu().numpy()
    if torch_scores.shape != ort_scores.shape:
        raise FidelityError(f"torch graph scores have shape {torch_scores.shape}, onnxruntime's "
                            f"{ort_scores.shape}")
    worst, (row, label) = max_score_difference(torch_scores, ort_scores)
    if not worst <= tolerance:
        raise FidelityError(
            f"torch graph disagrees with onnxruntime: max score difference {worst:.3g} > tolerance "
            f"{tolerance:g} (sample {row}, label {label}: onnxruntime {ort_scores[row, label]:.6g}, "
            f"torch {torch_scores[row, label]:.6g})", difference=worst if np.isfinite(worst) else None)
    return worst
