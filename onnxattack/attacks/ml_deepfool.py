"""ML-DeepFool: DeepFool extended to multi-label targets (Song et al., ICDM 2018)."""

from __future__ import annotations

import torch

from ._linearised import LinearisedAttack, select_labels
from ._qp import solve_nonnegative_qp

__all__ = ["MLDeepFool", "select_labels"]


class MLDeepFool(LinearisedAttack):
    """Each step linearises the labels at x_i and solves exactly

        min ||r||^2  s.t.  y*_l (s_l(x_i) - theta + g_l . r) >= 0  for the labels l in S_i

    through its dual (A = diag(y*) J_S, b = -y* o (s - theta) + margin, r = A^T lambda,
    lambda >= 0 maximising b.lambda - 1/2 lambda^T A A^T lambda); the iterate is clipped to the box.
    The loop, the overshoot margins (instead of the paper's (1 + eta) step scaling), the label subset
    `near` and the Jacobian's memory budget are shared with MLA-LP: see attacks/_linearised.py.
    """

    name = "ml-deepfool"

    def solve_step(self, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, x: torch.Tensor,
                   box: tuple[float, float]) -> torch.Tensor:
        del valid, x, box  # padding has a = 0 and b < 0: its multiplier is 0
        lam = solve_nonnegative_qp(a @ a.transpose(1, 2), b)
        return (a.transpose(1, 2) @ lam.unsqueeze(2)).squeeze(2)  # r = A^T lambda
