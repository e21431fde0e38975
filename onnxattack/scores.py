"""How scores are read, and the one place that decides predictions and success.

Attacks work on the *attack tensor* z (the logits feeding a final Sigmoid/Softmax when
there is one); `ScoreReader` maps z to the model's real scores and states the threshold in
both spaces. `ThresholdCriterion` and `RankingCriterion` decide predictions and success,
on onnxruntime scores (the verdict that is recorded) and on torch scores alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .types import DEFAULT_THRESHOLD, ScoresKind, Task

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(values: ArrayLike) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values)) if isinstance(values, np.ndarray) else values


@dataclass(frozen=True)
class ScoreReader:
    """kind: how the output reads; threshold: in output units; head: activation cut off the graph."""

    kind: ScoresKind
    threshold: float
    head: str | None = None  # "sigmoid", "softmax" or None

    @classmethod
    def create(cls, kind: ScoresKind, threshold: float | None, head: str | None) -> ScoreReader:
        chosen = DEFAULT_THRESHOLD[kind] if threshold is None else float(threshold)
        if head is not None and not 0.0 < chosen < 1.0:
            raise ValueError(f"a threshold on probabilities must lie in (0, 1), got {chosen}")
        return cls(kind=kind, threshold=chosen, head=head)

    @property
    def attack_threshold(self) -> float:
        """The threshold in attack space: sigmoid(z) > t iff z > logit(t); softmax_l > t iff log_softmax_l > log t."""
        if self.head == "sigmoid":
            return math.log(self.threshold / (1.0 - self.threshold))
        if self.head == "softmax":
            return math.log(self.threshold)
        return self.threshold

    def attack_space(self, z: torch.Tensor) -> torch.Tensor:
        """Per-label values compared with attack_threshold (log-softmax keeps softmax unsaturated)."""
        if self.head == "softmax":
            return torch.log_softmax(z, dim=-1)
        return z

    def to_scores(self, z: torch.Tensor) -> torch.Tensor:
        """The model's real output from the attack tensor."""
        if self.head == "sigmoid":
            return torch.sigmoid(z)
        if self.head == "softmax":
            return torch.softmax(z, dim=-1)
        return z


class Criterion(Protocol):
    task: Task

    def predict(self, scores: ArrayLike) -> np.ndarray: ...

    def reached(self, scores: ArrayLike, target: ArrayLike) -> np.ndarray: ...


@dataclass(frozen=True)
class ThresholdCriterion:
    """A label is positive when its score exceeds the threshold; success = every label as targeted."""

    threshold: float
    task: Task = Task.CLASSIFICATION

    def predict_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold

    def predict(self, scores: ArrayLike) -> np.ndarray:
        return self.predict_tensor(_as_tensor(scores)).cpu().numpy().astype(np.int8)

    def reached_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.predict_tensor(scores) == target.bool()).all(dim=-1)

    def reached(self, scores: ArrayLike, target: ArrayLike) -> np.ndarray:
        return self.reached_tensor(_as_tensor(scores), _as_tensor(target)).cpu().numpy()


@dataclass(frozen=True)
class RankingCriterion:
    """The predicted set is the top k; success = every target label outranks every other label."""

    k: int
    task: Task = Task.RANKING

    def predict_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.k, scores.shape[-1])
        top = torch.topk(scores, k, dim=-1).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)

    def predict(self, scores: ArrayLike) -> np.ndarray:
        return self.predict_tensor(_as_tensor(scores)).cpu().numpy().astype(np.int8)

    def reached_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        in_target = target.bool()
        inf = torch.tensor(float("inf"), dtype=scores.dtype, device=scores.device)
        lowest_target = torch.where(in_target, scores, inf).amin(dim=-1)
        highest_other = torch.where(in_target, -inf, scores).amax(dim=-1)
        return (lowest_target > highest_other) & in_target.any(dim=-1)

    def reached(self, scores: ArrayLike, target: ArrayLike) -> np.ndarray:
        return self.reached_tensor(_as_tensor(scores), _as_tensor(target)).cpu().numpy()


def criterion_for(task: Task, reader: ScoreReader, top_k: int) -> ThresholdCriterion | RankingCriterion:
    """The criterion on the model's real output (onnxruntime's verdict)."""
    if task is Task.RANKING:
        return RankingCriterion(k=top_k)
    return ThresholdCriterion(threshold=reader.threshold)
