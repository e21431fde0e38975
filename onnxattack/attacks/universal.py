"""Universal: one perturbation for a whole input set (Moosavi-Dezfooli et al., CVPR 2017), for label
targets (`universal`) and for top-k targets (`universal-topk`, kUAP of Hu et al., ICCV 2021)."""

from __future__ import annotations

import math

import torch

from ..errors import BadInputError
from ..scores import Criterion, TopKExclusionCriterion
from ..types import Task
from ._budget import BudgetedAttack, checked_budget, linf_bounds, within_l2
from ._checks import at_least_one, number
from ._criteria import threshold_criterion
from ._terms import untargeted_top_k_term
from .base import AttackResult, Epoch, Option, SetAttack, Victim


class UniversalPerturbation(BudgetedAttack, SetAttack):
    """min_delta  sum_i h_i(x_i + delta)  s.t.  ||delta|| <= eps,  x_i + delta clipped to the box

    with h_i the ML-CW hinge of input i's target (`loss`), stated on the attack tensor; one delta for every
    input. It is learnt over the set (`fit`) before any input is attacked: max_iter epochs of batched
    projected gradient steps on delta (norm "inf": along sign(grad), "2": along grad / ||grad||), each
    batch one step, step size on a cosine schedule that adds up to 2.5 eps over the whole run, as
    ML-PGD's does. The delta kept is the one of the epoch that satisfied the most inputs.
    `run` then adds it to each input, projected exactly into the budget and the box in the input's
    own dtype (as ML-PGD projects). Called on a batch without `fit`, it learns delta from that batch.

    Fitting stops early once the delta satisfies every input of the set.
    model_calls per row: 3 per epoch of the fit (forward + backward of the step, a forward measuring the
    epoch's delta), 1 for its own verdict.
    """

    name = "universal"
    task = Task.CLASSIFICATION
    options = {"kappa": Option(float, "confidence margin on the attack tensor (logits)")}

    def __init__(self, eps: float | None = None, norm: str = "inf", max_iter: int = 20,
                 step_size: float | None = None, kappa: float = 0.0) -> None:
        self.norm, self.eps = checked_budget(norm, eps)
        self.max_iter = at_least_one("max_iter", max_iter)
        self.step_size = None if step_size is None else number("step_size", step_size, positive=True)
        self.kappa = number("kappa", kappa, positive=False)
        self._delta: torch.Tensor | None = None
        self._fit_calls = 0

    @property
    def delta(self) -> torch.Tensor | None:
        """The learnt perturbation (sample shape), None before `fit` or `use`."""
        return self._delta

    def use(self, learnt: torch.Tensor, learning_calls: int = 0) -> None:
        """Attack with a perturbation learnt before (a resumed run reads it, and the fit's model calls
        per row, from its file)."""
        self._delta = learnt.detach()
        self._fit_calls = learning_calls

    def fit(self, victim: Victim, epoch: Epoch, batches: int, criterion: Criterion) -> torch.Tensor:
        """Learn delta over the set `epoch()` yields (in `batches` batches)."""
        if criterion.task is not self.task:
            raise BadInputError(f"{self.name} attacks {self.task.value} targets, the criterion is "
                                f"for {criterion.task.value}")
        return self._fit(victim, epoch, batches, criterion.in_attack_space(victim.reader))

    def loss(self, scores: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        """Per input: the ML-CW hinge of its target on the attack tensor."""
        labels = threshold_criterion(criterion, self.name)
        return (self.kappa + labels.margin - labels.label_margins(scores, target)).clamp_min(0).sum(dim=1)

    def _fit(self, victim: Victim, epoch: Epoch, batches: int, criterion: Criterion) -> torch.Tensor:
        lo, hi = victim.box
        steps = self.max_iter * max(1, batches)
        base = self.step_size
        delta: torch.Tensor | None = None
        best, best_held = None, -1
        step = epochs = 0
        while epochs < self.max_iter:
            epochs += 1
            for x, target in epoch():
                if delta is None:
                    delta = torch.zeros_like(x[0])
                    diameter = (hi - lo) * (1.0 if self.norm == "inf" else math.sqrt(delta.numel()))
                    reach = min(self.eps, diameter)  # beyond the box's diameter a budget changes nothing
                    base = base if base is not None else 2.5 * reach / steps
                assert base is not None
                leaf = delta.clone().requires_grad_(True)
                scores = victim.attack_space((x + leaf).clamp(lo, hi))
                (grad,) = torch.autograd.grad(self.loss(scores, target, criterion).sum(), leaf)
                with torch.no_grad():
                    size = base * (1 + math.cos(math.pi * step / steps))
                    direction = grad.sign() if self.norm == "inf" else grad / grad.norm().clamp_min(1e-12)
                    delta = self._project(delta - size * direction)
                step += 1
            if delta is None:
                raise BadInputError(f"{self.name}: no input to learn a perturbation from")
            held, total = self._held(victim, epoch, delta, criterion)  # the epoch's delta, measured over the set
            if held > best_held:
                best, best_held = delta.clone(), held
            if held == total:
                break
        assert best is not None
        self._delta = best
        self._fit_calls = 3 * epochs
        return best

    @property
    def learning_calls(self) -> int:
        """Model calls per row the fit took (2 per epoch for the step, 1 for measuring the epoch's delta)."""
        return self._fit_calls

    def _held(self, victim: Victim, epoch: Epoch, delta: torch.Tensor, criterion: Criterion) -> tuple[int, int]:
        """(inputs whose target delta reaches, inputs), on the attack tensor."""
        lo, hi = victim.box
        held = total = 0
        with torch.no_grad():
            for x, target in epoch():
                scores = victim.attack_space((x + delta).clamp(lo, hi))
                held += int(criterion.reached_tensor(scores, target).sum())
                total += len(x)
        return held, total

    def _project(self, delta: torch.Tensor) -> torch.Tensor:
        """Into the eps ball, exactly in delta's dtype (eps itself may round up: 0.2 in float32 > 0.2)."""
        if self.norm == "inf":
            bound = torch.tensor(self.eps, dtype=delta.dtype)
            if float(bound) > self.eps:
                bound = torch.nextafter(bound, torch.zeros_like(bound))
            return delta.clamp(-float(bound), float(bound))
        scaled = delta * min(1.0, self.eps / max(float(delta.norm()), 1e-30))
        return within_l2(torch.zeros_like(delta)[None], scaled[None], self.eps)[0]

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        if self._delta is None:
            batch = (x.detach(), target)
            self._fit(victim, lambda: [batch], 1, criterion)
        assert self._delta is not None
        lo, hi = victim.box
        x = x.detach()
        candidate = (x + self._delta.to(x.dtype)).clamp(lo, hi)
        if self.norm == "inf":
            low, high = linf_bounds(x, self.eps, victim.box)
            x_adv = torch.minimum(torch.maximum(candidate, low), high)
        else:
            x_adv = within_l2(x, candidate, self.eps)
        with torch.no_grad():
            success = criterion.reached_tensor(victim.attack_space(x_adv), target)
        n = x.shape[0]
        calls = torch.full((n,), self._fit_calls + 1, dtype=torch.long, device=x.device)
        epochs = torch.full((n,), self.max_iter, dtype=torch.long, device=x.device)
        return AttackResult.from_inputs(x, x_adv, success, epochs, calls)


class UniversalTopK(UniversalPerturbation):
    """kUAP (Hu et al., ICCV 2021): one perturbation that pushes each input's target labels (default: its
    clean top k) out of the top k, for rankers and classifiers alike; K from --top-k. The loss per
    input is tkml-u's: a hinge per target label against the k-th best score outside the target set."""

    name = "universal-topk"
    task = Task.TOP_K_EXCLUSION
    default_target = "hide-all"

    def loss(self, scores: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> torch.Tensor:
        if not isinstance(criterion, TopKExclusionCriterion):
            raise BadInputError(f"{self.name} needs a top-k exclusion criterion, got {type(criterion).__name__}")
        return untargeted_top_k_term(scores, target, criterion, self.kappa + criterion.gap)

