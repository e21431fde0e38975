"""Criteria as the attacks' losses need them (shared, so no method imports another)."""

from __future__ import annotations

from ..errors import BadInputError
from ..scores import Criterion, ThresholdCriterion


def threshold_criterion(criterion: Criterion, method: str) -> ThresholdCriterion:
    """The label-wise criterion the classification losses are stated in."""
    if not isinstance(criterion, ThresholdCriterion):
        raise BadInputError(f"{method} needs a per-label threshold criterion, got {type(criterion).__name__}")
    return criterion
