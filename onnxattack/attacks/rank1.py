"""Rank I: the target set T must outrank every other label (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ..types import Task
from ._search import SearchSettings, constant_search
from ._terms import FLOAT_GUARD, hinge, masked_max, masked_min, ordered_pairs
from .base import Attack, AttackResult, Victim


def rank1_term(scores: torch.Tensor, target: torch.Tensor, kappa: float) -> torch.Tensor:
    """max(0, kappa + max_{j not in T} s_j - min_{i in T} s_i)."""
    in_target = target.bool()
    return hinge(kappa + FLOAT_GUARD + masked_max(scores, ~in_target) - masked_min(scores, in_target))


class RankI(Attack):
    """min ||r||^2 + c * max(0, kappa + max_{j not in T} s_j - min_{i in T} s_i), as ML-CW optimises."""

    name = "rank1"
    task = Task.RANKING

    def __init__(self, max_iter: int = 1000, binary_steps: int = 10, initial_const: float = 1.0,
                 learning_rate: float = 1e-2, kappa: float = 0.0, abort_early: bool = True) -> None:
        self.max_iter = max_iter
        self.binary_steps = binary_steps
        self.initial_const = initial_const
        self.learning_rate = learning_rate
        self.kappa = kappa
        self.abort_early = abort_early

    def loss_term(self, victim: Victim, x: torch.Tensor):
        del victim, x
        return lambda scores, goal: rank1_term(scores, goal, self.kappa)

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor) -> AttackResult:
        def quality(scores: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return ordered_pairs(scores, goal)

        settings = SearchSettings(self.max_iter, self.binary_steps, self.initial_const,
                                  self.learning_rate, self.abort_early)
        return constant_search(victim, x, target, self.loss_term(victim, x), quality, settings)
