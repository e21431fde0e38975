"""ML-PGD: projected gradient descent on the ML-CW hinge inside an L-inf or L2 budget."""

from __future__ import annotations

import math

import torch

from ..scores import Criterion
from ..types import Task
from ._budget import BudgetedAttack, checked_budget, linf_bounds, per_row, within_l2
from ._checks import at_least_one, number
from ._criteria import threshold_criterion
from .base import AttackResult, Option, Victim


class MLPGD(BudgetedAttack):
    """min_{x'} h(x') = sum_l max(0, kappa + m - y*_l (s_l(x') - theta))  s.t.  ||x' - x|| <= eps, x' in the box

    by projected gradient descent (Madry et al., 2018) on the ML-CW hinge, stated on the attack tensor
    (m: the criterion's float guard). eps is in input units; norm "inf" steps along sign(grad),
    norm "2" along grad / ||grad||_2. The budget is not minimised: a row stops at its first success.

    - Start: uniform in the L-inf ball, or uniform in the L2 ball (random_start=False: x itself),
      drawn from torch's generator (the pipeline seeds it with --seed).
    - Step size, cosine schedule: step t of max_iter is step_size * (1 + cos(pi t / max_iter)), so the
      steps add up to max_iter x step_size; the default step_size 2.5 eps / max_iter makes that 2.5 eps
      (eps capped at the box's diameter, beyond which a budget changes nothing),
      as in Madry et al.'s constant schedule, with long steps first and fine ones at the end.
    - Projection onto the budget AND the box: for L-inf their intersection, element-wise and exact in
      the input's own dtype (linf_bounds: |x' - x| <= eps holds after rounding); for L2 the ball's
      radial projection, then the box (clipping toward x keeps the ball), then a pull toward x where
      rounding left the norm above eps (within_l2).
    - restarts: rows that have not succeeded start again from a new random point; each row keeps its
      first successful iterate, else its best: most labels on their target side, ties -> lower loss.

    model_calls per row: 1 forward + 1 backward per step it takes part in, 1 forward for the last
    iterate of a run; rows leave the batch once they succeed. iterations: gradient steps taken.
    """

    name = "ml-pgd"
    task = Task.CLASSIFICATION
    options = {
        "restarts": Option(int, "runs from new random starts for the rows not yet successful"),
        "random_start": Option(bool, "start from x itself, not from a random point of the budget",
                               switch="no-random-start", value=False),
        "kappa": Option(float, "confidence margin on the attack tensor (logits)"),
    }

    def __init__(self, eps: float | None = None, norm: str = "inf", max_iter: int = 100, restarts: int = 1,
                 step_size: float | None = None, random_start: bool = True, kappa: float = 0.0) -> None:
        self.norm, self.eps = checked_budget(norm, eps)
        self.max_iter = at_least_one("max_iter", max_iter)
        self.restarts = at_least_one("restarts", restarts)
        self.step_size = (2.5 * self.eps / self.max_iter if step_size is None
                          else number("step_size", step_size, positive=True))
        self._step_from_eps = step_size is None
        self.random_start = bool(random_start)
        self.kappa = number("kappa", kappa, positive=False)

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        labels = threshold_criterion(criterion, self.name)
        wanted = self.kappa + labels.margin
        x = x.detach()
        n = x.shape[0]
        best_x = x.clone()
        best_quality = torch.full((n,), -1.0, dtype=x.dtype, device=x.device)
        best_loss = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        calls = torch.zeros(n, dtype=torch.long, device=x.device)

        for restart in range(self.restarts):
            ids = (~done).nonzero().squeeze(1)
            if ids.numel() == 0:
                break
            current = self._start(x[ids], victim.box)
            for step in range(self.max_iter + 1):
                victim.report(max((restart + step / (self.max_iter + 1)) / self.restarts, float(done.float().mean())))
                leaf = current.requires_grad_(True)
                with victim.on_rows(None if len(ids) == n else ids):
                    scores = victim.attack_space(leaf)
                    loss = (wanted - labels.label_margins(scores, target[ids])).clamp_min(0).sum(dim=1)
                    with torch.no_grad():
                        quality, success = labels.progress(scores.detach(), target[ids])
                    calls[ids] += 1
                    last = step == self.max_iter or bool(success.all())
                    grad = None if last else torch.autograd.grad(loss.sum(), leaf)[0]
                with torch.no_grad():
                    loss = loss.detach()
                    better = success | (quality > best_quality[ids]) | (
                        (quality == best_quality[ids]) & (loss < best_loss[ids]))
                    best_x[ids[better]] = current[better].detach()
                    best_quality[ids[better]] = quality[better]
                    best_loss[ids[better]] = loss[better]
                    done[ids[success]] = True
                    if grad is None:
                        break
                    calls[ids] += 1  # the backward ran over every row of the batch
                    stay = ~success
                    ids, current, grad = ids[stay], current.detach()[stay], grad[stay]
                    current = self._step(x[ids], current, grad, step, victim.box)
                    iterations[ids] += 1
        return AttackResult.from_inputs(x, best_x, done, iterations, calls)

    def _reach(self, x: torch.Tensor, box: tuple[float, float]) -> float:
        """The budget that can matter: eps, at most the box's diameter (a larger eps would only make the
        default steps and the random start overshoot the box)."""
        diameter = (box[1] - box[0]) * (1.0 if self.norm == "inf" else math.sqrt(x[0].numel()))
        return min(self.eps, diameter)

    def _start(self, x: torch.Tensor, box: tuple[float, float]) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        reach = self._reach(x, box)
        if self.norm == "inf":
            return self._project(x, x + (torch.rand_like(x) * 2 - 1) * reach, box)
        direction = torch.randn_like(x)
        direction = direction / per_row(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        radius = reach * torch.rand(len(x), dtype=x.dtype, device=x.device) ** (1.0 / x[0].numel())
        return self._project(x, x + direction * per_row(radius, x), box)

    def _step(self, x: torch.Tensor, current: torch.Tensor, grad: torch.Tensor, step: int,
              box: tuple[float, float]) -> torch.Tensor:
        mean_step = self.step_size * (self._reach(x, box) / self.eps if self._step_from_eps else 1.0)
        size = mean_step * (1 + math.cos(math.pi * step / self.max_iter))
        if self.norm == "inf":
            direction = grad.sign()
        else:
            direction = grad / per_row(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
        return self._project(x, current - size * direction, box)

    def _project(self, x: torch.Tensor, candidate: torch.Tensor, box: tuple[float, float]) -> torch.Tensor:
        """Onto the budget around x and the box (see the class docstring)."""
        if self.norm == "inf":
            low, high = linf_bounds(x, self.eps, box)
            return torch.maximum(torch.minimum(candidate, high), low)
        delta = candidate - x
        norm = delta.flatten(1).norm(dim=1)
        delta = delta * per_row((self.eps / norm.clamp_min(1e-30)).clamp_max(1.0), delta)
        return within_l2(x, (x + delta).clamp(box[0], box[1]), self.eps)
