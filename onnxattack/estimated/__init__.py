"""Estimated gradients for score paths that cannot become a torch graph (tree ensembles, ops
without converters, custom domains): onnxruntime computes the scores, queries estimate the
gradients, and ML-CW / Rank I / Rank II run on the result unchanged."""

from __future__ import annotations

from .outputs import positive_class_output
from .query import (
    DEFAULT_RADIUS,
    DEFAULT_SAMPLES,
    STALL_REASONS,
    QueryBudgetError,
    QueryLedger,
    QueryModel,
)

__all__ = ["DEFAULT_RADIUS", "DEFAULT_SAMPLES", "QueryBudgetError", "QueryLedger",
           "QueryModel", "STALL_REASONS", "positive_class_output"]
