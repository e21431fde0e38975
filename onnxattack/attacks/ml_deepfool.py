"""ML-DeepFool: DeepFool extended to multi-label targets (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ..types import Task
from ._jacobian import scores_and_jacobian
from ._qp import solve_nonnegative_qp
from ._terms import label_margins, signs
from .base import Attack, AttackResult, Victim


class MLDeepFool(Attack):
    """Each step linearises every label at x_i and solves exactly

        min ||r||^2  s.t.  y*_l (s_l(x_i) - theta + g_l . r) >= 0  for all l

    through its dual (A = diag(y*) J, b = -y* o (s - theta), r = A^T lambda); the iterate is
    clipped to the box and a sample stops at its first success.

    Overshoot: scaling the step by (1 + eta), as single-label DeepFool does, pushes every
    label whose constraint is active in the QP (a kept label sitting on its boundary) to the
    wrong side. Instead each label asks for eta * max(|s_l - theta|, 1) of margin beyond its
    boundary: wrong-side labels cross by a little, right-side labels keep most of their slack.
    """

    name = "ml-deepfool"
    task = Task.CLASSIFICATION

    def __init__(self, max_iter: int = 50, overshoot: float = 0.02, jacobian: str = "auto") -> None:
        self.max_iter = max_iter
        self.overshoot = overshoot
        self.jacobian = jacobian

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor) -> AttackResult:
        lo, hi = victim.box
        threshold = victim.threshold
        criterion = victim.criterion(self.task)
        n = x.shape[0]
        current = x.detach().clone()
        best_x = x.detach().clone()
        best_matched = torch.full((n,), -1, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        y_sign = signs(target)

        for _ in range(self.max_iter + 1):
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            scores, jac = scores_and_jacobian(victim.attack_space, current[active], self.jacobian)
            goal = target[active]
            matched = (label_margins(scores, goal, threshold) > 0).sum(dim=1)
            success = criterion.reached_tensor(scores, goal)
            improved = matched > best_matched[active]
            keep = active[improved | success]
            best_x[keep] = current[keep]
            best_matched[active] = torch.maximum(best_matched[active], matched)
            done[active[success]] = True
            still = ~success
            if not bool(still.any()) or int(iterations.max()) >= self.max_iter:
                break
            ids = active[still]
            a = y_sign[ids].to(jac.dtype).unsqueeze(2) * jac[still]  # [m, L, d]
            distance = scores[still] - threshold
            margin = self.overshoot * distance.abs().clamp_min(1.0)
            b = -y_sign[ids].to(scores.dtype) * distance + margin
            lam = solve_nonnegative_qp(a @ a.transpose(1, 2), b)
            step = (a.transpose(1, 2) @ lam.unsqueeze(2)).squeeze(2)  # r = A^T lambda
            current[ids] = (current[ids] + step.view_as(current[ids])).clamp(lo, hi)
            iterations[ids] += 1
        return AttackResult.from_inputs(x, best_x, done, iterations)
