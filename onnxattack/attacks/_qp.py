"""The small dual QP of ML-DeepFool, solved batched:

    min_{lambda >= 0} 1/2 lambda^T Q lambda - b^T lambda,   Q = A A^T  (L x L per sample)

Coordinate descent (exact line minimisation per coordinate) finds the active set; the KKT
system on that set is then solved directly, which makes the answer exact when the active set
is right (checked by the KKT conditions, else the coordinate-descent answer stands).
"""

from __future__ import annotations

import torch


def _coordinate_descent(q: torch.Tensor, b: torch.Tensor, sweeps: int, tol: float) -> torch.Tensor:
    n, labels = b.shape
    lam = torch.zeros_like(b)
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


def solve_nonnegative_qp(q: torch.Tensor, b: torch.Tensor, sweeps: int = 200, tol: float = 1e-10) -> torch.Tensor:
    """lambda >= 0 minimising 1/2 l^T Q l - b^T l for each sample of the batch."""
    q64, b64 = q.double(), b.double()
    lam = _coordinate_descent(q64, b64, sweeps, tol)
    active = lam > 0
    eye = torch.eye(b.shape[1], dtype=q64.dtype, device=q.device).expand_as(q64)
    both_active = active.unsqueeze(2) & active.unsqueeze(1)
    ridge = 1e-12 * torch.diagonal(q64, dim1=1, dim2=2).sum(dim=1).clamp_min(1e-12)
    system = torch.where(both_active, q64, eye) + ridge.view(-1, 1, 1) * eye
    rhs = torch.where(active, b64, torch.zeros_like(b64))
    polished = torch.linalg.solve(system, rhs.unsqueeze(2)).squeeze(2)
    polished = torch.where(active, polished, torch.zeros_like(polished))
    better = kkt_violation(q64, b64, polished) <= kkt_violation(q64, b64, lam)
    lam = torch.where(better.unsqueeze(1), polished.clamp_min(0), lam)
    return lam.to(b.dtype)
