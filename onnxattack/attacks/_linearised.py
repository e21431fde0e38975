"""What ML-DeepFool and MLA-LP share: each step linearises the labels at the current point and
solves a small problem for the step; they differ only in that problem (an L2 QP, an L-inf LP).

Per iteration and row: one forward, the row's progress and best iterate, the labels whose constraint
enters the problem (select_labels), their Jacobian, then `solve_step` with

    a_l = y*_l g_l (g_l the gradient of label l),   b_l = margin asked of label l - y*_l (s_l - theta),

so the linearised constraint of label l reads a_l . r >= b_l. The iterate is clipped to the box; a row
stops as soon as the criterion it was given says it succeeded.

Shared departures from the paper:
- Overshoot: scaling the step by (1 + eta), as single-label DeepFool does, pushes every label whose
  constraint is active (a kept label sitting on its boundary) to the wrong side. Instead each label
  asks for eta * max(|s_l - theta|, 1) of margin beyond its boundary: wrong-side labels cross by a
  little, right-side labels keep most of their slack.
- Label subset (near): only violated labels and those within `near` x the largest violation of their
  boundary get a gradient (see select_labels); near=inf takes every label (the paper). With hundreds
  of labels most are far on their side: the Jacobian and the problem shrink to the few that matter.
- Memory: the Jacobian of a group of rows (rows x |S| x d x itemsize) is kept under
  jacobian_budget_mb; when the active rows do not fit at once they are re-run in groups (one extra
  forward per row, counted in model_calls).

model_calls per row and iteration: 1 forward, plus the Jacobian's backward (1 vectorised; 2|S|
replicated; |S| loop). A victim with its own `jacobian` (estimated gradients) counts 2 per row and
call; its queries are in its own ledger.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from ..errors import ConfigError
from ..scores import Criterion
from ..types import Task
from ._checks import at_least_one, number
from ._criteria import threshold_criterion
from .base import Attack, AttackResult, Option, Victim
from .jacobian import JACOBIAN_MODES, jacobian_of


def _backward_calls(mode: str, labels: int) -> int:
    """Model calls per row of a Jacobian taken on an existing forward (its forward counted apart)."""
    return {"batched-grads": 1, "replicated": 2 * labels}.get(mode, labels)


def select_labels(b: torch.Tensor, near: float) -> torch.Tensor:
    """The labels whose constraint enters the problem, as an index [m, K] padded with -1.

    b_l > 0: violated. A satisfied label joins when its slack -b_l is within near x the row's
    largest violation: a step of that size can reach it. Labels left out and crossed anyway are
    violated at the next iterate, and join then."""
    largest = b.amax(dim=1, keepdim=True).clamp_min(0)
    chosen = b >= -near * largest if math.isfinite(near) else torch.ones_like(b, dtype=torch.bool)
    k = max(1, int(chosen.sum(dim=1).max()))
    # chosen labels first (stable), padding after
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :k]
    return torch.where(chosen.gather(1, order), order, torch.full_like(order, -1))


class LinearisedAttack(Attack):
    """The loop of the linearising methods; subclasses supply `solve_step`."""

    task = Task.CLASSIFICATION
    options = {
        "overshoot": Option(float, "margin asked beyond each boundary"),
        "near": Option(float, "labels within this margin of their boundary get a gradient (inf: every label)"),
        "jacobian_budget_mb": Option(float, "memory for one Jacobian, in MB"),
    }

    def __init__(self, max_iter: int = 50, overshoot: float = 0.02, jacobian: str = "auto",
                 near: float = 1.0, jacobian_budget_mb: float = 256.0) -> None:
        if jacobian not in JACOBIAN_MODES:
            raise ConfigError("jacobian", f"unknown Jacobian mode {jacobian!r} (expected one of: "
                                          f"{', '.join(JACOBIAN_MODES)})")
        self.max_iter = at_least_one("max_iter", max_iter)
        self.overshoot = number("overshoot", overshoot, positive=False)
        self.jacobian = jacobian
        if not (isinstance(near, (int, float)) and not isinstance(near, bool) and near >= 0):
            raise ConfigError("near", f"near must be a non-negative number (inf: every label), got {near!r}")
        self.near = float(near)
        self.jacobian_budget_mb = number("jacobian_budget_mb", jacobian_budget_mb, positive=True)

    @abstractmethod
    def solve_step(self, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor, x: torch.Tensor,
                   box: tuple[float, float]) -> torch.Tensor:
        """The step r [m, d] for the linearised constraints a [m, K, d] . r >= b [m, K] (valid [m, K]:
        which of the K are real; padding has a = 0, b = -1), taken from the rows x [m, d]."""

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        lo, hi = victim.box
        labels = threshold_criterion(criterion, self.name)
        n = x.shape[0]
        current = x.detach().clone()
        best_x = x.detach().clone()
        best_matched = torch.full((n,), -1.0, dtype=x.dtype, device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        calls = torch.zeros(n, dtype=torch.long, device=x.device)
        y_sign = target.to(x.dtype) * 2 - 1
        budget = self.jacobian_budget_mb * 2**20
        mode = self.jacobian

        for iteration in range(self.max_iter + 1):
            victim.report(max(iteration / (self.max_iter + 1), float(done.float().mean())))
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            sent = None if len(active) == n else active  # the rows a sub-batch call sends (Victim.on_rows)
            with victim.on_rows(sent):
                if victim.jacobian is not None:
                    scores, full_jac = victim.jacobian(current[active], active)
                    calls[active] += 2
                    leaf = None
                else:
                    leaf = current[active].requires_grad_(True)
                    scores = victim.attack_space(leaf)
                    calls[active] += 1
            goal = target[active]
            with torch.no_grad():
                matched, success = labels.progress(scores.detach(), goal)
                improved = matched > best_matched[active]
                keep = active[improved | success]
                best_x[keep] = current[keep]
                best_matched[active] = torch.maximum(best_matched[active], matched)
                done[active[success]] = True
            still = ~success
            if not bool(still.any()) or int(iterations.max()) >= self.max_iter:
                break
            ids = active[still]
            with torch.no_grad():
                distance = scores.detach() - labels.threshold
                margin = (self.overshoot * distance.abs().clamp_min(1.0)).clamp_min(labels.margin)
                b_all = -y_sign[active].to(scores.dtype) * distance + margin
                index = select_labels(b_all, self.near)
                index = torch.where(still.unsqueeze(1), index, torch.full_like(index, -1))
            k = index.shape[1]
            row_bytes = k * current[0].numel() * current.element_size()
            if leaf is None:
                jac = full_jac.gather(1, index.clamp_min(0).unsqueeze(2).expand(-1, -1, full_jac.shape[2]))
            elif row_bytes * len(active) <= budget:
                with victim.on_rows(sent):
                    jac, mode = jacobian_of(victim.attack_space, current[active], scores, leaf, index, mode)
                calls[active] += _backward_calls(mode, k)
            else:
                jac = self._grouped(victim, current, active, still, index, budget, row_bytes, calls)
            with torch.no_grad():
                sel = index[still]
                valid = sel >= 0
                pick = sel.clamp_min(0)
                a = (y_sign[ids].gather(1, pick) * valid).to(jac.dtype).unsqueeze(2) * jac[still]  # [m, K, d]
                b = torch.where(valid, b_all[still].gather(1, pick), torch.full_like(pick, -1, dtype=b_all.dtype))
                step = self.solve_step(a, b, valid, current[ids].flatten(1), (lo, hi))
                current[ids] = (current[ids] + step.view_as(current[ids])).clamp(lo, hi)
                iterations[ids] += 1
        return AttackResult.from_inputs(x, best_x, done, iterations, calls)

    def _grouped(self, victim: Victim, current: torch.Tensor, active: torch.Tensor, still: torch.Tensor,
                 index: torch.Tensor, budget: float, row_bytes: int, calls: torch.Tensor) -> torch.Tensor:
        """The Jacobian of the rows that still need a step, re-run in groups that fit the budget."""
        positions = still.nonzero().squeeze(1)
        group = max(1, int(budget // max(row_bytes, 1)))
        jac = torch.zeros(len(active), index.shape[1], current[0].numel(), dtype=current.dtype,
                          device=current.device)
        for start in range(0, len(positions), group):
            part = positions[start:start + group]
            rows = active[part]
            leaf = current[rows].requires_grad_(True)
            with victim.on_rows(rows):
                scores = victim.attack_space(leaf)
                jac[part], mode = jacobian_of(victim.attack_space, current[rows], scores, leaf, index[part],
                                              self.jacobian)
            calls[rows] += 1 + _backward_calls(mode, index.shape[1])
        return jac
