"""ML-CW: Carlini-Wagner extended to multi-label targets (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ..types import Task
from ._search import SearchSettings, constant_search
from ._terms import FLOAT_GUARD, label_margins
from .base import Attack, AttackResult, Victim


class MLCarliniWagner(Attack):
    """min ||r||^2 + c * sum_l max(0, kappa - y*_l (s_l(x + r) - theta)), x + r in the box via tanh.

    The hinge is stated on the attack tensor (logits, or log-softmax), so a unit of margin means
    the same whatever the model's output. On a [0, 1] box the squared distance of a successful
    perturbation is of order 1, hence initial_const = 1; failures raise c tenfold until a
    success bounds it, then c is bisected per sample. (The reference code's 1e5 compensates for
    flat sigmoid outputs, which attacking logits avoids.)
    """

    name = "ml-cw"
    task = Task.CLASSIFICATION

    def __init__(self, max_iter: int = 1000, binary_steps: int = 10, initial_const: float = 1.0,
                 learning_rate: float = 1e-2, kappa: float = 0.0, abort_early: bool = True) -> None:
        self.max_iter = max_iter
        self.binary_steps = binary_steps
        self.initial_const = initial_const
        self.learning_rate = learning_rate
        self.kappa = kappa
        self.abort_early = abort_early

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor) -> AttackResult:
        threshold = victim.threshold
        kappa = self.kappa + FLOAT_GUARD

        def loss_term(scores: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
            return (kappa - label_margins(scores, goal, threshold)).clamp_min(0).sum(dim=1)

        def quality(scores: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            matched = (label_margins(scores, goal, threshold) > FLOAT_GUARD).sum(dim=1)
            return matched.to(scores.dtype), matched == goal.shape[1]

        settings = SearchSettings(self.max_iter, self.binary_steps, self.initial_const,
                                  self.learning_rate, self.abort_early)
        return constant_search(victim, x, target, loss_term, quality, settings)
