"""The ML-DeepFool dual QP is solved exactly, batched."""

from __future__ import annotations

import torch

from onnxattack.attacks._qp import kkt_violation, solve_nonnegative_qp


def _projected_gradient(q, b, steps=20000):
    lam = torch.zeros_like(b)
    step = 1 / torch.linalg.eigvalsh(q).amax(dim=1, keepdim=True)
    for _ in range(steps):
        lam = (lam - step * (torch.einsum("nij,nj->ni", q, lam) - b)).clamp_min(0)
    return lam


def test_qp_meets_kkt_and_matches_a_slow_reference():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(16, 10, 30, generator=generator, dtype=torch.float64)
    q = a @ a.transpose(1, 2)
    b = torch.randn(16, 10, generator=generator, dtype=torch.float64)
    lam = solve_nonnegative_qp(q, b)
    assert (lam >= 0).all()
    assert kkt_violation(q, b, lam).max() < 1e-8
    reference = _projected_gradient(q, b)
    assert torch.allclose(lam, reference, atol=1e-5)
    assert (lam == 0).any() and (lam > 0).any()  # both active and inactive constraints occur


def test_qp_primal_solution_satisfies_the_linearised_constraints():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(8, 6, 50, generator=generator, dtype=torch.float64)
    b = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    lam = solve_nonnegative_qp(a @ a.transpose(1, 2), b)
    r = (a.transpose(1, 2) @ lam.unsqueeze(2)).squeeze(2)
    assert ((a @ r.unsqueeze(2)).squeeze(2) >= b - 1e-8).all()  # A r >= b


def _coupled_rank_deficient(labels: int, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A pitch model's shape: each label leans on its neighbours and the Jacobian has rank < labels, so Q
    is singular and far from an M-matrix. b = A r0 - slack keeps the primal feasible (the dual bounded)."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(4, labels, rank, generator=generator, dtype=torch.float64)
    u = u + 0.9 * torch.roll(u, 1, dims=1) + 0.9 * torch.roll(u, -1, dims=1)
    a = u @ torch.randn(4, rank, 200, generator=generator, dtype=torch.float64)
    r0 = torch.randn(4, 200, 1, generator=generator, dtype=torch.float64)
    b = (a @ r0).squeeze(2) - 3 * torch.rand(4, labels, generator=generator, dtype=torch.float64)
    return a, a @ a.transpose(1, 2), b


def test_qp_on_singular_coupled_labels_gives_the_least_norm_step():
    for labels, rank in ((60, 20), (120, 40)):
        a, q, b = _coupled_rank_deficient(labels, rank, seed=labels)
        lam = solve_nonnegative_qp(q, b)
        r = (a.transpose(1, 2) @ lam.unsqueeze(2)).squeeze(2)
        shortfall = (b - (a @ r.unsqueeze(2)).squeeze(2)).clamp_min(0).amax(dim=1) / (1 + b.abs().amax(dim=1))
        assert (shortfall < 1e-6).all()  # the linearised constraints hold
        assert kkt_violation(q, b, lam).max() < 1e-6
        reference = _projected_gradient(q, b, steps=20000)  # r = A^T lambda is unique even where lambda is not
        r_reference = (a.transpose(1, 2) @ reference.unsqueeze(2)).squeeze(2)
        assert torch.allclose(r.norm(dim=1), r_reference.norm(dim=1), rtol=1e-4)
