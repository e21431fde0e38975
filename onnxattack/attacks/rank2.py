"""Rank II: Rank I plus terms that keep the kept labels in place (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ..scores import RankingCriterion
from ._search import LossTerm
from ._terms import hinge, masked_max, masked_min
from .base import Victim
from .rank1 import RankI, rank1_term


class RankII(RankI):
    """Groups from the clean top-k prediction P and the target T:
    A+ = P \\ T (to hide), A- = T \\ P (to show), B+ = P & T (kept), B- = neither (kept).
    Target order A- > B+ > B- > A+: the Rank I term, plus
    max(0, kappa + max_{A+} s - min_{B-} s) and max(0, kappa + max_{B+} s - min_{A-} s).
    Groups differ in size per sample; empty groups are masked out, never multiplied by 0.
    """

    name = "rank2"

    def loss_term(self, victim: Victim, x: torch.Tensor, criterion: RankingCriterion) -> tuple[LossTerm, int]:
        with torch.no_grad():  # one clean forward per row
            clean = criterion.predict_tensor(victim.attack_space(x))
        kappa = self.kappa
        margin = kappa + criterion.gap

        def term(scores: torch.Tensor, goal: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            in_target = goal.bool()
            predicted = clean[rows]
            hide, show = predicted & ~in_target, in_target & ~predicted
            keep_positive, keep_negative = predicted & in_target, ~predicted & ~in_target
            low_order = hinge(kappa + masked_max(scores, hide) - masked_min(scores, keep_negative))
            high_order = hinge(kappa + masked_max(scores, keep_positive) - masked_min(scores, show))
            return rank1_term(scores, goal, margin) + low_order + high_order

        return term, 1
