"""Helpers shared by the converters."""

from __future__ import annotations

from typing import Any

from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.utils.common import get_const_value


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


def normalise_axes(axes: list[int], rank: int) -> list[int]:
    """Negative axes made positive, order kept (Pad's pads follow the order of its axes)."""
    return [axis + rank if axis < 0 else axis for axis in axes]
