"""ML-Square: the Square Attack's random search on the multi-label hinge, within an L-inf or L2 budget."""

from __future__ import annotations

import torch

from ..scores import Criterion
from ..types import Task
from ._budget import BudgetedAttack, checked_budget, linf_bounds, per_row, within_l2
from ._checks import number
from ._criteria import threshold_criterion
from ._random_search import DEFAULT_BUDGET, Plane, halving_share, hinge_query, random_signs
from .base import AttackResult, Option, Victim

P_INIT = {"inf": 0.05, "2": 0.1}  # the paper's defaults (untargeted, ImageNet) for each norm


class MLSquare(BudgetedAttack):
    """min_{x'} h(x') = sum_l max(0, kappa + m - y*_l (s_l(x') - theta))  s.t.  ||x' - x|| <= eps, x' in the box

    by the Square Attack's score-based random search (Andriushchenko et al., ECCV 2020) on onnxruntime's
    scores, a black box: the victim is a query-counting view of onnxruntime (queries_only), never the
    torch graph. A candidate replaces the current point when it does not raise h (departure: the paper
    asks for a strict decrease; tree ensembles are flat almost everywhere, and taking equal moves lets
    the search walk across a plateau: on a scikit-learn forest at eps 0.2, 89% against 72%); a row
    stops the moment the criterion says it succeeded, or when it has spent its budget (--max-queries:
    every evaluation of the row counts, the initial one included). All candidates of a step go to
    onnxruntime in ONE call.

    Windows: a sample is viewed as channels x a plane (attacks/_random_search.Plane): images [C, H, W]
    get the paper's s x s squares across every channel; a tabular [T, F] sample an s x s window of its
    two axes; a vector [F] a 1-D run of round(p F) consecutive features. s = round(sqrt(p H W)), with
    the share p halving at the paper's fixed fractions of the budget (halving_share; p_init 0.05 for
    L-inf, 0.1 for L2 as in the paper).

    - L-inf: start from vertical stripes (delta = +-eps per channel and column); each step sets one
      window of every channel to a vertex x +- eps (a sign per channel), redrawn where it would change
      nothing, then clipped exactly to the budget and the box in the input's dtype (linf_bounds).
    - L2 (the paper's paired windows, odd sides of at least 3): start from tiled pseudo-Gaussian bumps
      (blocks of a fifth of each axis) of random sign, scaled to norm eps. A step picks windows W1 and
      W2, zeroes both and puts in W1 a fresh bump (random sign per channel) plus W1's old direction,
      scaled to carry the mass ||delta_{W1 u W2}||^2 plus the unused budget eps^2 - ||delta||^2, so
      ||delta|| = eps again; then the box and a pull inside the ball in the input's dtype (within_l2).
      Departure: the paper rescales each channel on its own; here the channels of a window are rescaled
      together (one norm per sample), which keeps the budget exact with any number of channels.

    iterations: candidate steps taken; model_calls: onnxruntime queries of the row (= `queries`).
    """

    name = "ml-square"
    task = Task.CLASSIFICATION
    queries_only = True
    options = {
        "p_init": Option(float, "share of the sample a window first covers (None: 0.05 for --norm inf, 0.1 for 2)"),
        "kappa": Option(float, "confidence margin on the scores"),
    }

    def __init__(self, eps: float | None = None, norm: str = "inf", p_init: float | None = None,
                 kappa: float = 0.0) -> None:
        self.norm, self.eps = checked_budget(norm, eps)
        self.p_init = P_INIT[self.norm] if p_init is None else number("p_init", p_init, positive=True)
        self.kappa = number("kappa", kappa, positive=False)
        self._generator: torch.Generator | None = None  # torch's own (the pipeline seeds it with --seed)

    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor, criterion: Criterion) -> AttackResult:
        labels = threshold_criterion(criterion, self.name)
        wanted = self.kappa + labels.margin
        budget = victim.budget or DEFAULT_BUDGET
        x = x.detach()
        n, plane = len(x), Plane.of(x.shape[1:])
        current = self._start(x, plane, victim.box)
        every = torch.arange(n, device=x.device)
        loss, success = hinge_query(victim, labels, wanted, current, target, every)
        spent = torch.ones(n, dtype=torch.long, device=x.device)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        while True:
            ids = (~success & (spent < budget)).nonzero().squeeze(1)
            if ids.numel() == 0:
                break
            victim.report(float(spent.min()) / budget)
            share = halving_share(self.p_init, int(spent[ids[0]]) - 1, budget)
            candidate = self._propose(x[ids], current[ids], plane, share, victim.box)
            new_loss, new_success = hinge_query(victim, labels, wanted, candidate, target[ids], ids)
            spent[ids] += 1
            iterations[ids] += 1
            better = new_success | (new_loss <= loss[ids])
            current[ids[better]] = candidate[better]
            loss[ids[better]] = new_loss[better]
            success[ids[better]] = new_success[better]
        return AttackResult.from_inputs(x, current, success, iterations, spent)

    # ---- starts -------------------------------------------------------------------------------
    def _start(self, x: torch.Tensor, plane: Plane, box: tuple[float, float]) -> torch.Tensor:
        n = len(x)
        if self.norm == "inf":
            stripes = random_signs((n, plane.channels, 1, plane.width), self._generator, x) * self.eps
            return self._linf(x, x + stripes.expand(-1, -1, plane.height, -1).reshape(x.shape), box)
        block = (max(1, plane.height // 5), max(1, plane.width // 5))
        bump = _bump(block, x)
        tiles = (-(-plane.height // block[0]), -(-plane.width // block[1]))
        signs = random_signs((n, plane.channels, *tiles), self._generator, x)
        delta = (signs.repeat_interleave(block[0], 2).repeat_interleave(block[1], 3)
                 * bump.repeat(*tiles))[..., :plane.height, :plane.width]
        return self._l2(x, x + self._scaled(delta.reshape(x.shape), self.eps), box)

    # ---- steps --------------------------------------------------------------------------------
    def _propose(self, x: torch.Tensor, current: torch.Tensor, plane: Plane, share: float,
                 box: tuple[float, float]) -> torch.Tensor:
        if self.norm == "inf":
            return self._vertex_step(x, current, plane, plane.window(share), box)
        side = plane.window(share, least=3)  # the paper's L2 windows: odd sides, at least 3
        size = tuple(d + 1 if d % 2 == 0 and d + 1 <= limit else d
                     for d, limit in zip(side, (plane.height, plane.width), strict=True))
        return self._paired_step(x, current, plane, (size[0], size[1]), box)

    def _vertex_step(self, x: torch.Tensor, current: torch.Tensor, plane: Plane, size: tuple[int, int],
                     box: tuple[float, float]) -> torch.Tensor:
        mask, _ = plane.place(len(x), size, self._generator, x.device)
        candidate = current
        pending = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(10):  # the paper redraws a window that would change nothing
            signs = random_signs((len(x), plane.channels, 1, 1), self._generator, x) * self.eps
            moved = torch.where(mask, plane.view(x) + signs, plane.view(current)).reshape(x.shape)
            moved = self._linf(x, moved, box)
            candidate = torch.where(per_row(pending, x), moved, candidate)
            pending &= (candidate == current).flatten(1).all(dim=1)
            if not bool(pending.any()):
                break
        return candidate

    def _paired_step(self, x: torch.Tensor, current: torch.Tensor, plane: Plane, size: tuple[int, int],
                     box: tuple[float, float]) -> torch.Tensor:
        n = len(x)
        delta = plane.view(current - x)
        first, inside = plane.place(n, size, self._generator, x.device)
        second, _ = plane.place(n, size, self._generator, x.device)
        both = first | second
        bump = _bump(size, x)
        if size[0] == size[1] and bool(torch.rand((), generator=self._generator) < 0.5):
            bump = bump.T
        fresh = bump[inside[..., 0], inside[..., 1]] * first  # [n, 1, H, W]
        fresh = fresh * random_signs((n, plane.channels, 1, 1), self._generator, x)
        old = delta * first
        window = self._unit(fresh) + self._unit(old)
        mass = (delta * both).flatten(1).pow(2).sum(dim=1)
        free = (self.eps**2 - delta.flatten(1).pow(2).sum(dim=1)).clamp_min(0)
        window = window * per_row((mass + free).sqrt() / window.flatten(1).norm(dim=1).clamp_min(1e-12), window)
        moved = torch.where(both, window, delta).reshape(x.shape)
        return self._l2(x, x + moved, box)

    # ---- budget -------------------------------------------------------------------------------
    def _linf(self, x: torch.Tensor, candidate: torch.Tensor, box: tuple[float, float]) -> torch.Tensor:
        low, high = linf_bounds(x, self.eps, box)
        return torch.maximum(torch.minimum(candidate, high), low)

    def _l2(self, x: torch.Tensor, candidate: torch.Tensor, box: tuple[float, float]) -> torch.Tensor:
        return within_l2(x, candidate.clamp(box[0], box[1]), self.eps)

    @staticmethod
    def _unit(values: torch.Tensor) -> torch.Tensor:
        return values / per_row(values.flatten(1).norm(dim=1).clamp_min(1e-12), values)

    def _scaled(self, delta: torch.Tensor, norm: float) -> torch.Tensor:
        return self._unit(delta) * norm


def _bump(size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """The paper's pseudo-Gaussian pattern on an h x w window: two halves along the longer axis, the
    second the negative of the first; each half holds concentric rings around its centre, a cell at
    Chebyshev distance d weighing sum_{k=d}^{K-1} 1 / (k + 1)^2 (K rings)."""
    h, w = size
    split_rows = h >= w and h > 1
    half = (max(1, h // 2), w) if split_rows else (h, max(1, w // 2))
    one = _rings(half, like)
    if (h if split_rows else w) < 2:
        return one
    rest = (h - half[0], w) if split_rows else (h, w - half[1])
    return torch.cat([one, -_rings(rest, like)], dim=0 if split_rows else 1)


def _rings(size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    h, w = size
    i = (torch.arange(h, device=like.device) - h // 2).abs().view(-1, 1)
    j = (torch.arange(w, device=like.device) - w // 2).abs().view(1, -1)
    distance = torch.maximum(i, j)
    rings = int(distance.max()) + 1
    weights = 1.0 / torch.arange(1, rings + 1, device=like.device, dtype=like.dtype) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} weights[k]
    return tail[distance]
