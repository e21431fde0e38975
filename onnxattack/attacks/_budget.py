"""What budgeted methods share: an eps in input units under an L-inf or L2 norm, and projections onto
the budget that hold exactly in the input's own dtype (ML-PGD, universal perturbations)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ._checks import number
from .base import Attack, Option

NORMS = ("inf", "2")
DEFAULT_EPS = {"inf": 8 / 255, "2": 0.5}  # the usual budgets for images in [0, 1]


def checked_budget(norm: str, eps: float | None) -> tuple[str, float]:
    """(norm, eps) checked, eps defaulting to the norm's usual budget (ML-PGD and universal share it)."""
    if norm not in NORMS:
        raise ConfigError("norm", f"unknown norm {norm!r} (expected one of: {', '.join(NORMS)})")
    return norm, number("eps", DEFAULT_EPS[norm] if eps is None else eps, positive=True)


def per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view((-1,) + (1,) * (like.dim() - 1))


def linf_bounds(x: torch.Tensor, eps: float, box: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The box [x - eps, x + eps] & [lo, hi] per element, such that |x' - x| <= eps holds exactly for
    every x' inside it in x's own dtype: x - eps is formed in float64, then rounded to x's dtype, where
    rounding to nearest can land one ulp outside (in x's dtype, eps itself would already be rounded)."""
    wide = x.double()
    low, high = (wide - eps).to(x.dtype), (wide + eps).to(x.dtype)
    for _ in range(2):
        low = torch.where(wide - low.double() > eps, torch.nextafter(low, x), low)
        high = torch.where(high.double() - wide > eps, torch.nextafter(high, x), high)
    return low.clamp_min(box[0]), high.clamp_max(box[1])


def within_l2(x: torch.Tensor, candidate: torch.Tensor, eps: float) -> torch.Tensor:
    """candidate pulled toward x until ||candidate - x||_2 <= eps holds in x's own dtype (the
    rounding of x + delta can add to the norm); x itself if it never does."""
    for attempt in range(8):
        norm = (candidate.double() - x.double()).flatten(1).norm(dim=1)
        over = norm > eps
        if not bool(over.any()):
            return candidate
        shrink = (eps / norm.clamp_min(1e-30)) * (1 - 2.0**-20 * 4**attempt)
        pulled = x + (candidate - x) * per_row(shrink, x).to(x.dtype)
        candidate = torch.where(per_row(over, x), pulled, candidate)
    norm = (candidate.double() - x.double()).flatten(1).norm(dim=1)
    return torch.where(per_row(norm > eps, x), x, candidate)



class BudgetedAttack(Attack):
    """A method that works within a budget eps (`--eps`, `--norm`) instead of minimising the norm; `curve`
    sweeps eps for any of them."""

    budgeted = True
    options = {
        "eps": Option(float, "perturbation budget in input units (None: 8/255 for --norm inf, 0.5 for --norm 2)"),
        "norm": Option(NORMS, "norm of the budget: inf (L-inf) or 2 (L2)"),
        "step_size": Option(float, "mean step of the cosine schedule (None: 2.5 eps / max-iter)"),
    }
