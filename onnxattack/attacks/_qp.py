"""The small dual QP of ML-DeepFool, solved batched:

    min_{lambda >= 0} 1/2 lambda^T Q lambda - b^T lambda,   Q = A A^T  (L x L per sample)

KKT: Q lambda - b = mu, lambda >= 0, mu >= 0, lambda o mu = 0.

Primal-dual active set (Hintermueller, Ito & Kunisch 2002): guess the free set F (lambda > 0),
solve Q_FF lambda_F = b_F with lambda = 0 elsewhere, compute mu = Q lambda - b, and move to
F = {i : lambda_i - mu_i / Q_ii > 0}. When F stops changing the KKT conditions hold exactly.
Each round is one batched masked solve (rows outside F are replaced by the identity), so the whole
batch takes a handful of kernels whatever L is. It starts from F = {violated constraints} (b > 0),
which is usually within a round or two of the answer.

PDAS can cycle when Q is far from an M-matrix, and its solves blow up when Q_FF is singular: a
model whose labels are coupled (360 pitch bins that lean on their neighbours) has a Jacobian of
lower rank than its label count. Rows still off the KKT conditions after `rounds` (or settled more
than FAR off: a ridge solve on a singular Q_FF can land on such a fixed point) are solved by
accelerated projected gradient (FISTA with gradient restarts, O'Donoghue & Candes 2015), batched:
every iteration is one batched matrix-vector product, however singular Q is, and r = A^T lambda
converges because the primal problem (min ||r||^2 s.t. A r >= b) is strongly convex. Its free set
then seeds a last PDAS pass; each row keeps whichever of the three answers is nearest the KKT conditions.
"""

from __future__ import annotations

import torch

SETTLED = 1e-8  # KKT violation (relative to 1 + max |b|) under which a row counts as solved
FAR = 1e-4  # a settled row further than this from the KKT conditions is solved again
CLOSE = 1e-6  # projected gradient stops here: the active-set pass that follows makes it exact where it can


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


def _active_set(q: torch.Tensor, b: torch.Tensor, free: torch.Tensor, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PDAS from the free set `free`: lambda, and per sample whether the free set reached its fixed point."""
    labels = b.shape[1]
    eye = torch.eye(labels, dtype=q.dtype, device=q.device).expand_as(q)
    diagonal = torch.diagonal(q, dim1=1, dim2=2).clamp_min(1e-12)
    ridge = 1e-12 * diagonal.sum(dim=1)
    settled = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    lam = torch.zeros_like(b)
    for _ in range(rounds):
        lam = _solve_on(q, b, free, eye, ridge)
        mu = (q @ lam.unsqueeze(2)).squeeze(2) - b
        updated = (lam - mu / diagonal) > 0
        settled = (updated == free).all(dim=1)
        if bool(settled.all()):
            break
        free = updated
    return lam.clamp_min(0), settled


def _projected_gradient(q: torch.Tensor, b: torch.Tensor, iterations: int, check_every: int = 25) -> torch.Tensor:
    """FISTA with gradient restarts from lambda = 0; stops once every row's KKT violation is under CLOSE."""
    step = 1 / torch.linalg.matrix_norm(q, ord=2).clamp_min(1e-30).unsqueeze(1)
    lam = torch.zeros_like(b)
    ahead = lam
    momentum = torch.ones(b.shape[0], 1, dtype=b.dtype, device=b.device)
    for iteration in range(1, iterations + 1):
        gradient = torch.einsum("nij,nj->ni", q, ahead) - b
        new = (ahead - step * gradient).clamp_min(0)
        restart = ((gradient * (new - lam)).sum(dim=1, keepdim=True) > 0)  # momentum points uphill: drop it
        momentum = torch.where(restart, torch.ones_like(momentum), momentum)
        following = (1 + torch.sqrt(1 + 4 * momentum * momentum)) / 2
        ahead = new + ((momentum - 1) / following) * (new - lam)
        lam, momentum = new, following
        if iteration % check_every == 0 and bool((kkt_violation(q, b, lam) < CLOSE).all()):
            break
    return lam


def solve_nonnegative_qp(q: torch.Tensor, b: torch.Tensor, rounds: int = 20, iterations: int = 3000) -> torch.Tensor:
    """lambda >= 0 minimising 1/2 l^T Q l - b^T l for each sample of the batch."""
    q64, b64 = q.double(), b.double()
    n, labels = b64.shape
    if n == 0 or labels == 0:
        return torch.zeros_like(b)
    lam, settled = _active_set(q64, b64, b64 > 0, rounds)
    violation = kkt_violation(q64, b64, lam)
    # unsettled rows, and fixed points that a singular Q_FF left far off (a solve with the ridge can land
    # on one); a fixed point within FAR is kept: Q comes from float32 Jacobians
    stuck = (~settled & (violation > SETTLED)) | (violation > FAR)
    if bool(stuck.any()):
        q_stuck, b_stuck = q64[stuck], b64[stuck]
        approximate = _projected_gradient(q_stuck, b_stuck, iterations)
        polished, _ = _active_set(q_stuck, b_stuck, approximate > 0, rounds)
        candidates = torch.stack([lam[stuck], approximate, polished])  # per row, the one nearest the KKT conditions
        violations = torch.stack([violation[stuck], kkt_violation(q_stuck, b_stuck, approximate),
                                  kkt_violation(q_stuck, b_stuck, polished)]).nan_to_num(float("inf"))
        best = violations.argmin(dim=0)
        lam[stuck] = candidates[best, torch.arange(len(best), device=best.device)]
    return lam.to(b.dtype)
