"""Small shared value types."""

from __future__ import annotations

from enum import Enum


class ScoresKind(str, Enum):
    """How the score output is read."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"  # independent sigmoid probabilities
    SOFTMAX = "softmax"  # probabilities that sum to one over the labels
    LABELS = "labels"  # a label output only: 0/1 indicators [N, L] (class indices [N] read as one-hot)

    @classmethod
    def parse(cls, text: str) -> ScoresKind:
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown scores kind {text!r} (expected one of: {names})") from None


class Task(str, Enum):
    """Which success criterion an attack aims at."""

    CLASSIFICATION = "classification"  # thresholded label set must equal the target
    RANKING = "ranking"  # the target labels must outrank all the others
    TOP_K_EXCLUSION = "top-k-exclusion"  # every target label must leave the top k (untargeted top-k)

    @property
    def ranks(self) -> bool:
        """Whether predictions are the top k of the scores (the criterion needs K), not a threshold."""
        return self is not Task.CLASSIFICATION


DEFAULT_THRESHOLD = {
    ScoresKind.LOGITS: 0.0,
    ScoresKind.PROBABILITIES: 0.5,
    ScoresKind.SOFTMAX: 0.5,
    ScoresKind.LABELS: 0.5,
}
