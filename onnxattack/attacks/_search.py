"""What ML-CW, Rank I and Rank II share: the tanh box, Adam on w, the per-sample constant
search, early abort and best-iterate bookkeeping. Each method only supplies its loss term and
a per-sample quality (higher is better; success is quality == its maximum)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .base import Attack, AttackResult, Victim

# (attack-space scores [N, L], target [N, L]) -> per-sample tensor [N]
LossTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Quality = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_NO_UPPER_BOUND = 1e10


@dataclass
class SearchSettings:
    max_iter: int
    binary_steps: int
    initial_const: float
    learning_rate: float
    abort_early: bool = True


def to_box(w: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * (torch.tanh(w) + 1) / 2


def from_box(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    unit = ((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.atanh(unit)


def constant_search(victim: Victim, x: torch.Tensor, target: torch.Tensor, loss_term: LossTerm,
                    quality: Quality, settings: SearchSettings) -> AttackResult:
    """min ||x' - x||^2 + c * loss_term over x' = box(w), c searched per sample."""
    lo, hi = victim.box
    n = x.shape[0]
    w0 = from_box(x, lo, hi).detach()
    const = torch.full((n,), settings.initial_const, dtype=x.dtype, device=x.device)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, _NO_UPPER_BOUND)

    best_x = x.detach().clone()
    best_quality = torch.full((n,), -1.0, dtype=x.dtype, device=x.device)
    best_l2 = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    check_every = max(1, settings.max_iter // 10)

    for _ in range(settings.binary_steps):
        w = w0.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=settings.learning_rate)
        step_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        previous = float("inf")
        for iteration in range(settings.max_iter):
            x_adv = to_box(w, lo, hi)
            scores = victim.attack_space(x_adv)
            distance = (x_adv - x).flatten(1).pow(2).sum(dim=1)
            loss = distance + const * loss_term(scores, target)
            optimiser.zero_grad()
            loss.sum().backward()
            optimiser.step()
            with torch.no_grad():
                value, success = quality(scores.detach(), target)
                l2 = distance.detach().sqrt()
                better = (value > best_quality) | ((value == best_quality) & (l2 < best_l2))
                best_quality = torch.where(better, value, best_quality)
                best_l2 = torch.where(better, l2, best_l2)
                best_success |= success
                best_x[better] = x_adv.detach()[better]
                step_success |= success
                iterations += (~best_success).long()
            if settings.abort_early and (iteration + 1) % check_every == 0:
                current = float(loss.detach().sum())
                if current > previous * 0.9999:
                    break
                previous = current
        with torch.no_grad():
            upper = torch.where(step_success, torch.minimum(upper, const), upper)
            lower = torch.where(step_success, lower, torch.maximum(lower, const))
            bisect = (lower + upper) / 2
            const = torch.where(upper < _NO_UPPER_BOUND, bisect, const * 10)
        if bool(best_success.all()) and not bool((upper - lower > 1e-3 * upper).any()):
            break
    return AttackResult.from_inputs(x, best_x, best_success, iterations)


class ConstantSearchAttack(Attack):
    """The hyperparameters ML-CW, Rank I and Rank II share (defaults: the paper's setting)."""

    def __init__(self, max_iter: int = 1000, binary_steps: int = 10, initial_const: float = 1.0,
                 learning_rate: float = 1e-2, kappa: float = 0.0, abort_early: bool = True) -> None:
        self.max_iter = max_iter
        self.binary_steps = binary_steps
        self.initial_const = initial_const
        self.learning_rate = learning_rate
        self.kappa = kappa
        self.abort_early = abort_early

    def settings(self) -> SearchSettings:
        return SearchSettings(self.max_iter, self.binary_steps, self.initial_const, self.learning_rate,
                              self.abort_early)
