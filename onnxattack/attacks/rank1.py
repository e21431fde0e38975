"""Rank I: the target set T must outrank every other label (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ..types import Task
from ._search import ConstantSearchAttack, constant_search
from ._terms import FLOAT_GUARD, hinge, masked_max, masked_min, ordered_pairs
from .base import AttackResult, Victim


def rank1_term(scores: torch.Tensor, target: torch.Tensor, kappa: float) -> torch.Tensor:
    """max(0, kappa + max_{j not in T} s_j - min_{i in T} s_i)."""
    in_target = target.bool()
    return hinge(kappa + FLOAT_GUARD + masked_max(scores, ~in_target) - masked_min(scores, in_target))


class RankI(ConstantSearchAttack):
    """min ||r||^2 + c * max(0, kappa + max_{j not in T} s_j - min_{i in T} s_i), as ML-CW optimises."""

    name = "rank1"
    task = Task.RANKING

    def loss_term(self, victim: Victim, x: torch.Tensor):
        del victim, x
        return lambda scores, goal: rank1_term(scores, goal, self.kappa)

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor) -> AttackResult:
        # quality: ordered (target, other) pairs; success once all of them are ordered
        return constant_search(victim, x, target, self.loss_term(victim, x), ordered_pairs, self.settings())
