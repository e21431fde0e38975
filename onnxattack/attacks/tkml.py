"""TkML-AP: targeted and untargeted attacks on top-k predictions (Hu et al., ICCV 2021).

Both minimise ||r||^2 + c * loss over the tanh box with ML-CW's per-row constant search
(attacks/_search.py), on the attack tensor; the predicted set is the top k of the scores, so they
apply to rankers and to classifiers alike. Each loss is a sum of hinges, one per label that has to
move, against the k-th best score of the labels it must pass.

Departures from the paper, both so that the loss is zero exactly when the criterion holds (the
constant search relies on an exact penalty), and a margin (kappa + the criterion's gap) can be asked:
- tkml-t: the paper's term for a target label i is [f_[k] - f_i]_+, f_[k] the k-th largest score of
  all labels; it vanishes with label i tied at place k, so it cannot ask for a margin. Here label i
  is compared with the best score outside T, which is f_[k+1] once T is the top k (|T| = k).
- tkml-u: the authors' code minimises the mean of the L - k largest values of max_{j in S} f_j - f_l
  (the top-k-sum identity), which keeps falling after success. Here each label of S gets a hinge
  against the k-th best score outside S, the TopKExclusionCriterion's own constraint.
"""

from __future__ import annotations

import torch

from ..errors import BadInputError
from ..scores import Criterion, RankingCriterion, TopKExclusionCriterion
from ..types import Task
from ._search import ConstantSearchAttack, LossTerm, constant_search
from ._terms import hinge, masked_max, untargeted_top_k_term
from .base import AttackResult, Victim
from .rank1 import RankI


def targeted_top_k_term(scores: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """sum_{i in T} max(0, margin + max_{j not in T} s_j - s_i)."""
    in_target = target.bool()
    best_outside = masked_max(scores, ~in_target).unsqueeze(-1)
    terms = hinge(margin + best_outside - scores)
    return torch.where(in_target, terms, torch.zeros_like(terms)).sum(dim=-1)


class TkMLTargeted(RankI):
    """TkML-AP-T: the target set T (top:K targets: K labels) must rank above every other label:
    min ||r||^2 + c * sum_{i in T} max(0, kappa + gap + max_{j not in T} s_j - s_i)."""

    name = "tkml-t"

    def loss_term(self, victim: Victim, x: torch.Tensor, criterion: RankingCriterion) -> tuple[LossTerm, int]:
        del victim, x
        margin = self.kappa + criterion.gap
        return (lambda scores, goal, rows: targeted_top_k_term(scores, goal, margin)), 0


class TkMLUntargeted(ConstantSearchAttack):
    """TkML-AP-U: every label of S (target 1) must leave the top k, k labels outside S above it:
    min ||r||^2 + c * sum_{j in S} max(0, kappa + gap + s_j - s'_[k]). The default target (hide-all)
    makes S the clean top k, the paper's setting with the prediction in place of the ground truth."""

    name = "tkml-u"
    task = Task.TOP_K_EXCLUSION
    default_target = "hide-all"

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        if not isinstance(criterion, TopKExclusionCriterion):
            raise BadInputError(f"{self.name} needs a top-k exclusion criterion, got {type(criterion).__name__}")
        exclusion = criterion
        margin = self.kappa + exclusion.gap

        def term(scores: torch.Tensor, goal: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return untargeted_top_k_term(scores, goal, exclusion, margin)

        return constant_search(victim, x, target, term, exclusion, self.settings())
