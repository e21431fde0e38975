"""Rank I: the target set T must outrank every other label (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ..errors import BadInputError
from ..scores import Criterion, RankingCriterion
from ..types import Task
from ._search import ConstantSearchAttack, LossTerm, constant_search
from ._terms import hinge, masked_max, masked_min
from .base import AttackResult, Victim


def ranking_criterion(criterion: Criterion, method: str) -> RankingCriterion:
    if not isinstance(criterion, RankingCriterion):
        raise BadInputError(f"{method} needs a ranking criterion, got {type(criterion).__name__}")
    return criterion


def rank1_term(scores: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, margin + max_{j not in T} s_j - min_{i in T} s_i)."""
    in_target = target.bool()
    return hinge(margin + masked_max(scores, ~in_target) - masked_min(scores, in_target))


class RankI(ConstantSearchAttack):
    """min ||r||^2 + c * max(0, kappa + max_{j not in T} s_j - min_{i in T} s_i), as ML-CW optimises
    (the margin asked for is kappa plus the criterion's gap)."""

    name = "rank1"
    task = Task.RANKING

    def loss_term(self, victim: Victim, x: torch.Tensor, criterion: RankingCriterion) -> tuple[LossTerm, int]:
        """The loss term, and the model calls per row spent building it."""
        del victim, x
        margin = self.kappa + criterion.gap
        return (lambda scores, goal, rows: rank1_term(scores, goal, margin)), 0

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        ranking = ranking_criterion(criterion, self.name)
        term, spent = self.loss_term(victim, x, ranking)
        calls = torch.full((x.shape[0],), spent, dtype=torch.long, device=x.device)
        return constant_search(victim, x, target, term, ranking, self.settings(), calls)
