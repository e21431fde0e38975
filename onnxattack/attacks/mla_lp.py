"""MLA-LP: multi-label adversarial examples by linear programming (Zhou et al., IJCNN 2020)."""

from __future__ import annotations

import numpy as np
import torch

from ._linearised import LinearisedAttack


def _linear_program(a: np.ndarray, b: np.ndarray, low: np.ndarray, high: np.ndarray, slack: bool,
                    slack_cap: float | None = None) -> tuple[int, np.ndarray, float]:
    """Variables [r (d), t, s (K)]: min t (or, with slack and no cap, min sum s) subject to
    a r + s >= b, -t <= r <= t, low <= r <= high, s >= 0 (s = 0 without slack), sum s <= slack_cap.
    Returns (scipy's status, r, objective)."""
    from scipy import sparse  # scipy.optimize takes most of a second to import: only this method pays it
    from scipy.optimize import linprog

    k, d = a.shape
    eye = sparse.identity(d, format="csr")
    column = sparse.csr_matrix(np.ones((d, 1)))
    rows = [
        sparse.hstack([sparse.csr_matrix(-a), sparse.csr_matrix((k, 1)), -sparse.identity(k)]),  # a r + s >= b
        sparse.hstack([eye, -column, sparse.csr_matrix((d, k))]),  # r - t <= 0
        sparse.hstack([-eye, -column, sparse.csr_matrix((d, k))]),  # -r - t <= 0
    ]
    rhs = [-b, np.zeros(2 * d)]
    if slack_cap is not None:
        rows.append(sparse.csr_matrix(np.concatenate([np.zeros(d + 1), np.ones(k)])[None, :]))
        rhs.append(np.array([slack_cap]))
    minimise_slack = slack and slack_cap is None
    cost = np.concatenate([np.zeros(d), [0.0 if minimise_slack else 1.0], np.full(k, 1.0 if minimise_slack else 0.0)])
    bounds = np.column_stack([np.concatenate([low, [0.0], np.zeros(k)]),
                              np.concatenate([high, [np.inf], np.full(k, np.inf if slack else 0.0)])])
    result = linprog(cost, A_ub=sparse.vstack(rows).tocsc(), b_ub=np.concatenate(rhs), bounds=bounds,
                     method="highs")
    if result.status != 0:
        return result.status, np.zeros(d), float("inf")
    return 0, result.x[:d], float(result.fun)


def linf_minimal_step(a: np.ndarray, b: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """min ||r||_inf s.t. a r >= b, low <= r <= high. When the box makes that infeasible: the r of
    least total violation sum_l max(0, b_l - a_l r), and among those the smallest in L-inf."""
    status, step, _ = _linear_program(a, b, low, high, slack=False)
    if status != 2:  # solved (or failed for numerical reasons: no step)
        return step
    status, _, violation = _linear_program(a, b, low, high, slack=True)
    if status != 0:
        return np.zeros_like(low)
    _, step, _ = _linear_program(a, b, low, high, slack=True, slack_cap=violation * (1 + 1e-9) + 1e-12)
    return step


class MLALP(LinearisedAttack):
    """Each step linearises the labels at x_i and solves the L-inf-minimal linear program

        min t  s.t.  -t <= r_j <= t,  lo <= x_i + r <= hi,  y*_l (s_l(x_i) - theta + g_l . r) >= margin_l

    (scipy's HiGHS, one LP per row and step, in float64), for the labels l of the subset S_i; the
    iterate is clipped to the box and a row stops once the criterion says it succeeded. It is the
    L-inf counterpart of ML-DeepFool and shares its loop, margins, label subset and Jacobian
    (attacks/_linearised.py).

    Departures from the paper: the overshoot is the per-label margin ML-DeepFool asks for (see
    _linearised), and only the labels of S_i enter the LP (near=inf: every label, as the paper).
    The box is a constraint of the LP, so a step never relies on clipping; when the box makes the
    linearised targets unreachable, the step is the one of least total violation (then the smallest
    such in L-inf) instead of none.
    """

    name = "mla-lp"

    def solve_step(self, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, x: torch.Tensor,
                   box: tuple[float, float]) -> torch.Tensor:
        lo, hi = box
        rows = x.detach().cpu().double().numpy()
        steps = torch.zeros_like(x)
        for row in range(len(rows)):
            keep = valid[row].cpu().numpy()
            step = linf_minimal_step(a[row].cpu().double().numpy()[keep], b[row].cpu().double().numpy()[keep],
                                     lo - rows[row], hi - rows[row])
            steps[row] = torch.from_numpy(step).to(steps)
        return steps
