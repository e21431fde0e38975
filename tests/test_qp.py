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
