"""How scores are read, and the one place that decides predictions and success.

Attacks work on the *attack tensor* z (the logits feeding a final Sigmoid/Softmax when
there is one); `ScoreReader` maps z to the model's real scores and states the threshold in
both spaces. The criteria (`ThresholdCriterion`, `RankingCriterion`, `TopKExclusionCriterion`) decide predictions,
per-constraint progress and success, on onnxruntime scores (the verdict that is recorded) and
on the attack tensor alike: `in_attack_space` restates a criterion on z with the margin the
attacks aim for. Nothing else re-derives thresholds or success.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .types import DEFAULT_THRESHOLD, ScoresKind, Task

ArrayLike = np.ndarray | torch.Tensor

# Torch and onnxruntime differ by ~1e-6 on the same float32 input. An optimiser that stops on
# the boundary (kappa = 0) leaves a margin that small, and onnxruntime may then disagree, so
# criteria on the attack tensor ask for margins of at least FLOAT_GUARD (attack units).
FLOAT_GUARD = 1e-3
# probabilities read as margins in logit units: a quantised output of exactly 0 or 1 stays finite
_PROBABILITY_FLOOR = 1e-6


def _as_tensor(values: ArrayLike) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values)) if isinstance(values, np.ndarray) else values


def _numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().cpu().numpy()


@dataclass(frozen=True)
class ScoreReader:
    """kind: how the output reads; threshold: in output units; head: activation cut off the graph;
    rounding: the output's dtype when it is coarser than float32 (a Cast to float16 after the head)."""

    kind: ScoresKind
    threshold: float
    head: str | None = None  # "sigmoid", "softmax" or None
    rounding: torch.dtype | None = None

    @classmethod
    def create(cls, kind: ScoresKind, threshold: float | None, head: str | None,
               output_dtype: np.dtype | None = None) -> ScoreReader:
        chosen = DEFAULT_THRESHOLD[kind] if threshold is None else float(threshold)
        if not math.isfinite(chosen):
            raise ValueError(f"the threshold must be a finite number, got {chosen}")
        if head is not None and not 0.0 < chosen < 1.0:
            raise ValueError(f"a threshold on probabilities must lie in (0, 1), got {chosen}")
        return cls(kind=kind, threshold=chosen, head=head, rounding=_coarse_torch_dtype(output_dtype))

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

    def decision_margins(self, values: torch.Tensor) -> torch.Tensor:
        """Attack-space values -> per-label margins in logit units: positive where the label is predicted
        (score > threshold), comparable between models that read their scores differently (a float
        model attacked on its logits, its int8 build whose quantised probabilities keep their head)."""
        if self.head is not None or self.kind is ScoresKind.LOGITS:
            return values - self.attack_threshold
        clamped = values.clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
        if self.kind is ScoresKind.SOFTMAX:
            return torch.log(clamped) - math.log(self.threshold)
        return torch.logit(clamped) - math.log(self.threshold / (1.0 - self.threshold))

    def to_scores(self, z: torch.Tensor) -> torch.Tensor:
        """The model's real output from the attack tensor, rounded as the model's output dtype rounds it
        (the head cut off the graph takes the output's final Cast with it)."""
        if self.head == "sigmoid":
            scores = torch.sigmoid(z)
        elif self.head == "softmax":
            scores = torch.softmax(z, dim=-1)
        else:
            return z
        return scores if self.rounding is None else scores.to(self.rounding).to(scores.dtype)


def _coarse_torch_dtype(dtype: np.dtype | None) -> torch.dtype | None:
    """The torch dtype of a floating output coarser than float32 (float16), else None."""
    if dtype is None or np.dtype(dtype).kind != "f" or np.finfo(dtype).eps <= np.finfo(np.float32).eps:
        return None
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


class Criterion(Protocol):
    """What decides success. Tensor methods work on torch scores, the others on numpy or torch."""

    @property
    def task(self) -> Task: ...

    def predict_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        """The predicted label set, bool [N, L]."""

    def satisfied_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Which of the criterion's constraints hold, bool [N, C]."""

    def reached_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Success per sample, bool [N]."""

    def progress(self, scores: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(constraints that hold [N] as float, success [N]): higher is better; success is the maximum."""

    def predict(self, scores: ArrayLike) -> np.ndarray:
        """The predicted label set as int8 0/1 [N, L]."""

    def reached(self, scores: ArrayLike, target: ArrayLike) -> np.ndarray:
        """Success per sample as bool [N]."""

    def in_attack_space(self, reader: ScoreReader) -> Criterion:
        """The same decisions stated on the attack tensor, with the FLOAT_GUARD margin."""


class _Decisions:
    """predict / reached / progress for numpy and torch, from the two tensor methods."""

    def predict_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def satisfied_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reached_from(self, satisfied: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Success per sample from satisfied_tensor's constraints."""
        return satisfied.all(dim=-1)

    def reached_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.reached_from(self.satisfied_tensor(scores, target), target)

    def progress(self, scores: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        satisfied = self.satisfied_tensor(scores, target)  # once: progress runs every search iteration
        return satisfied.sum(dim=-1).to(scores.dtype), self.reached_from(satisfied, target)

    def predict(self, scores: ArrayLike) -> np.ndarray:
        return _numpy(self.predict_tensor(_as_tensor(scores))).astype(np.int8)

    def reached(self, scores: ArrayLike, target: ArrayLike) -> np.ndarray:
        return _numpy(self.reached_tensor(_as_tensor(scores), _as_tensor(target)))


@dataclass(frozen=True)
class ThresholdCriterion(_Decisions):
    """A label is positive when its score exceeds the threshold; success = every label as targeted.

    With a margin m, a label counts as on its target side only when it is there by m:
    s > threshold + m for a positive target, s <= threshold - m for a negative one
    (m = 0 is exactly the prediction rule).
    """

    threshold: float
    margin: float = 0.0
    task: Task = Task.CLASSIFICATION

    def predict_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold

    def label_margins(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """y*_l (s_l - theta): positive where label l is on its target side (the losses' variable)."""
        signs = target.to(scores.dtype) * 2 - 1
        return signs * (scores - self.threshold)

    def satisfied_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        wanted = target.bool()
        return torch.where(wanted, scores > self.threshold + self.margin, scores <= self.threshold - self.margin)

    def in_attack_space(self, reader: ScoreReader) -> ThresholdCriterion:
        return ThresholdCriterion(threshold=reader.attack_threshold, margin=FLOAT_GUARD)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest-scored labels of each row, bool [N, L]."""
    top = torch.topk(scores, min(k, scores.shape[-1]), dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)


@dataclass(frozen=True)
class RankingCriterion(_Decisions):
    """The predicted set is the top k; success = every target label outranks every other label (by gap)."""

    k: int
    gap: float = 0.0
    task: Task = Task.RANKING

    def predict_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        return top_k_mask(scores, self.k)

    def satisfied_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One constraint per (i in T, j not in T) pair, s_i > s_j + gap; other pairs hold trivially."""
        in_target = target.bool()
        above = scores.unsqueeze(-1) > scores.unsqueeze(-2) + self.gap  # [n, i, j] = s_i > s_j + gap
        pairs = in_target.unsqueeze(-1) & ~in_target.unsqueeze(-2)
        return (above | ~pairs).flatten(-2)

    def reached_from(self, satisfied: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().reached_from(satisfied, target) & target.bool().any(dim=-1)  # an empty T is no target

    def in_attack_space(self, reader: ScoreReader) -> RankingCriterion:
        del reader  # sigmoid and log-softmax keep the order of the labels
        return RankingCriterion(k=self.k, gap=FLOAT_GUARD)


@dataclass(frozen=True)
class TopKExclusionCriterion(_Decisions):
    """Untargeted top-k: the predicted set is the top k; the target marks a set S of labels that must
    all leave it. Success = every label of S scores below the k-th best label outside S (by gap), so
    k labels outside S outrank all of S. S needs at least k labels outside it; an empty S is no target.
    """

    k: int
    gap: float = 0.0
    task: Task = Task.TOP_K_EXCLUSION

    def predict_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        return top_k_mask(scores, self.k)

    def kth_outside(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The k-th largest score among the labels outside S, per row; -inf when fewer than k are."""
        outside = torch.where(target.bool(), torch.full_like(scores, float("-inf")), scores)
        return torch.topk(outside, min(self.k, scores.shape[-1]), dim=-1).values[..., -1]

    def satisfied_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One constraint per label: a label of S lies below the k-th best outside S by gap; the others hold."""
        below = scores + self.gap < self.kth_outside(scores, target).unsqueeze(-1)
        return below | ~target.bool()

    def reached_from(self, satisfied: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().reached_from(satisfied, target) & target.bool().any(dim=-1)  # an empty S is no target

    def in_attack_space(self, reader: ScoreReader) -> TopKExclusionCriterion:
        del reader  # sigmoid and log-softmax keep the order of the labels
        return TopKExclusionCriterion(k=self.k, gap=FLOAT_GUARD)


@dataclass(frozen=True)
class DisagreementCriterion(_Decisions):
    """Two models' decision margins side by side, [N, 2S]: A's on the S labels they share, then B's, in
    logit units (ScoreReader.decision_margins). Success (a pair method's `disagree`): on some shared label
    one model predicts it and the other does not, each by `margin` (their predicted label sets differ).
    There is no target: the target argument is ignored."""

    margin: float = 0.0
    task: Task = Task.CLASSIFICATION

    @staticmethod
    def halves(margins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = margins.shape[-1] // 2
        return margins[..., :shared], margins[..., shared:]

    def predict_tensor(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > 0

    def satisfied_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per shared label [N, S]: the two models sit on opposite sides of their thresholds by the margin."""
        a, b = self.halves(scores)
        above_a, below_a = a > self.margin, a <= -self.margin
        above_b, below_b = b > self.margin, b <= -self.margin
        return (above_a & below_b) | (below_a & above_b)

    def reached_tensor(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.satisfied_tensor(scores, target).any(dim=-1)

    def progress(self, scores: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Success alone is the progress: any disagreeing label is as good as several, then smaller wins."""
        reached = self.reached_tensor(scores, target)
        return reached.to(scores.dtype), reached

    def hinge(self, scores: torch.Tensor) -> torch.Tensor:
        """Per shared label [N, S]: how far the pair is from disagreeing on it (0 exactly where it does),
        the nearer of the two ways (A predicts it and B not, or the reverse)."""
        a, b = self.halves(scores)
        a_only = (self.margin - a).clamp_min(0) + (self.margin + b).clamp_min(0)
        b_only = (self.margin + a).clamp_min(0) + (self.margin - b).clamp_min(0)
        return torch.minimum(a_only, b_only)

    def in_attack_space(self, reader: ScoreReader) -> DisagreementCriterion:
        return self


def criterion_for(task: Task, reader: ScoreReader,
                  top_k: int) -> ThresholdCriterion | RankingCriterion | TopKExclusionCriterion:
    """The criterion on the model's real output (onnxruntime's verdict)."""
    if task is Task.RANKING:
        return RankingCriterion(k=top_k)
    if task is Task.TOP_K_EXCLUSION:
        return TopKExclusionCriterion(k=top_k)
    return ThresholdCriterion(threshold=reader.threshold)
