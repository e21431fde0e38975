"""A straightforward reimplementation of the published ML-CW procedure, as the cost baseline.

The reference code attacks sigmoid probabilities p with a hinge at 0.5:
    loss = ||x' - x||^2 + c * sum_l max(0, -y*_l (p_l(x') - 0.5)),   x' = box(tanh w)
with c0 = 1e5, Adam lr 0.01, 10 binary steps x 1000 iterations, a batch-level abort every
max_iter/10 iterations when the summed loss exceeds 0.9999 x the previous check, per-sample
best iterate (successful, then smallest L2) and per-sample bisection of c. Every row of the
batch takes part in every iteration: 2 model calls per row and iteration.

On a model whose output is logits, p = sigmoid(z - theta) (the same decisions as z > theta).
Written from the description in the paper and ../shared/docs/attacks.md, not copied. It imports torch
alone (not onnxattack), so that bench/bare_reference.py can run it in a process as bare as the reference's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

_NO_UPPER_BOUND = 1e10


@dataclass
class ReferenceResult:
    x_adv: torch.Tensor
    success: torch.Tensor
    model_calls: torch.Tensor


def _to_box(w: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * (torch.tanh(w) + 1) / 2


def _from_box(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.atanh(((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))


def reference_ml_cw(logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                    box: tuple[float, float] = (0.0, 1.0), theta: float = 0.0, softmax: bool = False,
                    max_iter: int = 1000, binary_steps: int = 10, initial_const: float = 1e5,
                    learning_rate: float = 1e-2, abort_early: bool = True) -> ReferenceResult:
    """logits: the model's attack tensor; theta: its decision threshold on it; softmax: the model's
    probabilities are a softmax of it (else a sigmoid); abort_early=False runs every step to max_iter."""
    lo, hi = box
    n = len(x)
    sign = target.to(x.dtype) * 2 - 1
    w0 = _from_box(x, lo, hi).detach()
    def full(value: float) -> torch.Tensor:
        return torch.full((n,), value, dtype=x.dtype, device=x.device)

    const, lower, upper, best_l2 = full(initial_const), full(0.0), full(_NO_UPPER_BOUND), full(float("inf"))
    best_x = x.detach().clone()
    calls = torch.zeros(n, dtype=torch.long, device=x.device)
    check = max(1, max_iter // 10)
    for _ in range(binary_steps):
        w = w0.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=learning_rate)
        step_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        previous = float("inf")
        for iteration in range(max_iter):
            x_adv = _to_box(w, lo, hi)
            z = logits(x_adv)
            p = torch.softmax(z, dim=-1) if softmax else torch.sigmoid(z - theta)
            hinge = (-sign * (p - 0.5)).clamp_min(0).sum(dim=1)
            distance = (x_adv - x).flatten(1).pow(2).sum(dim=1)
            loss = distance + const * hinge
            optimiser.zero_grad()
            loss.sum().backward()
            optimiser.step()
            calls += 2
            with torch.no_grad():
                success = ((p > 0.5) == target.bool()).all(dim=1)
                l2 = distance.sqrt()
                better = success & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_x[better] = x_adv.detach()[better]
                step_success |= success
            if abort_early and (iteration + 1) % check == 0:
                current = float(loss.detach().sum())
                if current > previous * 0.9999:
                    break
                previous = current
        upper = torch.where(step_success, torch.minimum(upper, const), upper)
        lower = torch.where(step_success, lower, torch.maximum(lower, const))
        const = torch.where(upper < _NO_UPPER_BOUND, (lower + upper) / 2, const * 10)
    return ReferenceResult(best_x, torch.isfinite(best_l2), calls)
