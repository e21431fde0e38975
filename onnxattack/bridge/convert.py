"""onnx2torch conversion with the project's converters, and the fidelity check against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import defs
from onnx2torch import convert as onnx2torch_convert
from onnx2torch.node_converters.registry import get_converter

from ..errors import ConversionError, FidelityError
from ..runtime import OrtScorer
from ..scores import ScoreReader
from . import converters  # noqa: F401  (registers the project's converters)


def _op_version(node: onnx.NodeProto, opsets: dict[str, int]) -> int:
    domain = node.domain or ""
    opset = opsets.get(domain, opsets.get("ai.onnx", 1)) if domain in ("", "ai.onnx") else opsets.get(domain, 1)
    try:
        return defs.get_schema(node.op_type, max_inclusive_version=opset, domain=domain).since_version
    except (RuntimeError, defs.SchemaError):
        return opset


def blocking_ops(model: onnx.ModelProto) -> list[str]:
    """Every op (with its version) that has no converter, e.g. 'ai.onnx.ml.Scaler-1'."""
    opsets = {imp.domain or "": int(imp.version) for imp in model.opset_import}
    missing: set[str] = set()
    for node in model.graph.node:
        version = _op_version(node, opsets)
        try:
            get_converter(node.op_type, version, node.domain or "")
        except NotImplementedError:
            prefix = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            missing.add(f"{prefix}{node.op_type}-{version}")
    return sorted(missing)


def to_torch(model: onnx.ModelProto) -> torch.nn.Module:
    """A frozen, eval-mode torch graph of `model`; ConversionError names what blocks it."""
    missing = blocking_ops(model)
    if missing:
        raise ConversionError(f"the score graph cannot become a torch graph: no converter for "
                              f"{', '.join(missing)}", blocking_ops=missing)
    try:
        module = onnx2torch_convert(model)
    except NotImplementedError as exc:
        raise ConversionError(f"the score graph cannot become a torch graph: {exc}") from None
    except Exception as exc:  # onnx2torch raises KeyError, ValueError, ... on odd graphs
        raise ConversionError(f"onnx2torch failed on the score graph: {type(exc).__name__}: {exc}") from None
    module.eval()  # at once: BatchNorm must never see a forward in training mode
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def max_score_difference(torch_scores: np.ndarray, ort_scores: np.ndarray) -> tuple[float, tuple[int, int]]:
    difference = np.abs(torch_scores.astype(np.float64) - ort_scores.astype(np.float64))
    if not np.all(np.isfinite(difference)):
        difference = np.where(np.isfinite(difference), difference, np.inf)
    where = np.unravel_index(int(np.argmax(difference)), difference.shape)
    return float(difference[where]), (int(where[0]), int(where[1]))


def check_fidelity(graph: torch.nn.Module, reader: ScoreReader, scorer: OrtScorer, probe: np.ndarray,
                   tolerance: float, torch_dtype: torch.dtype, device: torch.device) -> float:
    """Max |torch - onnxruntime| over the probe's scores; FidelityError beyond the tolerance."""
    ort_scores = scorer(probe)
    with torch.no_grad():
        z = graph(torch.as_tensor(probe, dtype=torch_dtype, device=device))
        torch_scores = reader.to_scores(z).float().cpu().numpy()
    if torch_scores.shape != ort_scores.shape:
        raise FidelityError(f"torch graph scores have shape {torch_scores.shape}, onnxruntime's "
                            f"{ort_scores.shape}")
    worst, (row, label) = max_score_difference(torch_scores, ort_scores)
    if not worst <= tolerance:
        raise FidelityError(
            f"torch graph disagrees with onnxruntime: max score difference {worst:.3g} > tolerance "
            f"{tolerance:g} (sample {row}, label {label}: onnxruntime {ort_scores[row, label]:.6g}, "
            f"torch {torch_scores[row, label]:.6g})")
    return worst
