"""ML-CW: Carlini-Wagner extended to multi-label targets (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ..types import Task
from ._search import ConstantSearchAttack, constant_search
from ._terms import FLOAT_GUARD, label_margins
from .base import AttackResult, Victim


class MLCarliniWagner(ConstantSearchAttack):
    """min ||r||^2 + c * sum_l max(0, kappa - y*_l (s_l(x + r) - theta)), x + r in the box via tanh.

    The hinge is stated on the attack tensor (logits, or log-softmax), so a unit of margin means
    the same whatever the model's output. On a [0, 1] box the squared distance of a successful
    perturbation is of order 1, hence initial_const = 1; failures raise c tenfold until a
    success bounds it, then c is bisected per sample. (The reference code's 1e5 compensates for
    flat sigmoid outputs, which attacking logits avoids.)
    """

    name = "ml-cw"
    task = Task.CLASSIFICATION

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor) -> AttackResult:
        threshold = victim.threshold
        kappa = self.kappa + FLOAT_GUARD

        def loss_term(scores: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
            return (kappa - label_margins(scores, goal, threshold)).clamp_min(0).sum(dim=1)

        def quality(scores: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            matched = (label_margins(scores, goal, threshold) > FLOAT_GUARD).sum(dim=1)
            return matched.to(scores.dtype), matched == goal.shape[1]

        return constant_search(victim, x, target, loss_term, quality, self.settings())
