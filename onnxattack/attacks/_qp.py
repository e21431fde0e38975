"""The small dual QP of ML-DeepFool, solved batched:

    min_{lambda >= 0} 1/2 lambda^T Q lambda - b^T lambda,   Q = A A^T  (L x L per sample)

KKT: Q lambda - b = mu, lambda >= 0, mu >= 0, lambda o mu = 0.

Primal-dual active set (Hintermueller, Ito & Kunisch 2002): guess the free set F (lambda > 0),
solve Q_FF lambda_F = b_F with lambda = 0 elsewhere, compute mu = Q lambda - b, and move to
F = {i : lambda_i - mu_i / Q_ii > 0}. When F stops changing the KKT conditions hold exactly.
Each round is one batched masked solve (rows outside F are replaced by the identity), so the whole
batch takes a handful of kernels whatever L is, instead of a Python loop over the L coordinates.
It starts from F = {violated constraints} (b > 0), which is usually within a round or two of the
answer. PDAS can cycle on matrices far from M-matrices: rows whose KKT residual is still above
tolerance after `rounds` go to coordinate descent (the old solver), warm-started from the PDAS point.
"""

from __future__ import annotations

import torch


def _coordinate_descent(q: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, sweeps: int,
                        tol: float) -> torch.Tensor:
    n, labels = b.shape
    lam = lam.clone()
    diagonal = torch.diagonal(q, dim1=1, dim2=2).clamp_min(1e-12)
    for _ in range(sweeps):
        largest_step = torch.zeros(n, dtype=b.dtype, device=b.device)
        for label in range(labels):
            gradient = (q[:, label, :] * lam).sum(dim=1) - b[:, label]
            updated = (lam[:, label] - gradient / diagonal[:, label]).clamp_min(0)
            largest_step = torch.maximum(largest_step, (updated - lam[:, label]).abs())
            lam[:, label] = updated
        if bool((largest_step <= tol * (1 + lam.abs().amax(dim=1))).all()):
            break
    return lam


def kkt_violation(q: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Per sample: max violation of lambda >= 0, gradient >= 0, lambda * gradient = 0."""
    gradient = torch.einsum("nij,nj->ni", q, lam) - b
    scale = 1 + b.abs().amax(dim=1)
    violation = torch.maximum((-lam).clamp_min(0), (-gradient).clamp_min(0))
    violation = torch.maximum(violation, (lam * gradient).abs())
    return violation.amax(dim=1) / scale


def _solve_on(q: torch.Tensor, b: torch.Tensor, free: torch.Tensor, eye: torch.Tensor,
              ridge: torch.Tensor) -> torch.Tensor:
    """lambda_F = Q_FF^-1 b_F, zero outside F, for every sample at once."""
    both = free.unsqueeze(2) & free.unsqueeze(1)
    system = torch.where(both, q, eye) + ridge.view(-1, 1, 1) * eye
    rhs = torch.where(free, b, torch.zeros_like(b))
    lam = torch.linalg.solve(system, rhs.unsqueeze(2)).squeeze(2)
    return torch.where(free, lam, torch.zeros_like(lam))


def solve_nonnegative_qp(q: torch.Tensor, b: torch.Tensor, rounds: int = 20, sweeps: int = 200,
                         tol: float = 1e-10) -> torch.Tensor:
    """lambda >= 0 minimising 1/2 l^T Q l - b^T l for each sample of the batch."""
    q64, b64 = q.double(), b.double()
    n, labels = b64.shape
    if n == 0 or labels == 0:
        return torch.zeros_like(b)
    eye = torch.eye(labels, dtype=q64.dtype, device=q.device).expand_as(q64)
    diagonal = torch.diagonal(q64, dim1=1, dim2=2).clamp_min(1e-12)
    ridge = 1e-12 * diagonal.sum(dim=1)
    free = b64 > 0
    lam = torch.zeros_like(b64)
    settled = False
    for _ in range(rounds):
        lam = _solve_on(q64, b64, free, eye, ridge)
        mu = (q64 @ lam.unsqueeze(2)).squeeze(2) - b64
        updated = (lam - mu / diagonal) > 0
        settled = bool((updated == free).all())
        if settled:
            break
        free = updated
    lam = lam.clamp_min(0)
    if settled:  # the free set is a fixed point: lambda_F > 0 and mu_A >= 0, the KKT conditions hold
        return lam.to(b.dtype)
    stuck = kkt_violation(q64, b64, lam) > 1e-8
    if bool(stuck.any()):
        lam[stuck] = _coordinate_descent(q64[stuck], b64[stuck], lam[stuck], sweeps, tol)
    return lam.to(b.dtype)
