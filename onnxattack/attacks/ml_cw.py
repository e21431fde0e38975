"""ML-CW: Carlini-Wagner extended to multi-label targets (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ..scores import Criterion
from ..types import Task
from ._criteria import threshold_criterion
from ._search import ConstantSearchAttack, constant_search
from .base import AttackResult, Victim


class MLCarliniWagner(ConstantSearchAttack):
    """min ||r||^2 + c * sum_l max(0, kappa - y*_l (s_l(x + r) - theta)), x + r in the box via tanh.

    The hinge is stated on the attack tensor (logits, or log-softmax), so a unit of margin means
    the same whatever the model's output; it asks for kappa plus the criterion's float guard.
    The first constant comes from the clean margins: c0 = 4 x 2 h(x) / ||grad h(x)||^2, the
    multiplier of the linearised constraint (see _search); failures raise c tenfold until a
    success bounds it, then c is bisected per sample. The hinge is an exact penalty, so any c
    above the true multiplier gives the same minimiser. (The reference code's 1e5 compensates
    for flat sigmoid outputs, which attacking logits avoids.)
    """

    name = "ml-cw"
    task = Task.CLASSIFICATION

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        labels = threshold_criterion(criterion, self.name)
        wanted = self.kappa + labels.margin

        def loss_term(scores: torch.Tensor, goal: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return (wanted - labels.label_margins(scores, goal)).clamp_min(0).sum(dim=1)

        return constant_search(victim, x, target, loss_term, labels, self.settings())
