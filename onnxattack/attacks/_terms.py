"""Loss terms and qualities on attack-space scores, shared by the methods."""

from __future__ import annotations

import torch

# Torch and onnxruntime differ by ~1e-6 on the same float32 input. An optimiser that stops on
# the boundary (kappa = 0) leaves a margin that small, and onnxruntime may then disagree, so
# the gradient attacks aim for, and only count, margins of at least FLOAT_GUARD (attack units).
FLOAT_GUARD = 1e-3


def signs(target: torch.Tensor) -> torch.Tensor:
    """0/1 target -> -1/+1."""
    return target.to(torch.float32) * 2 - 1


def label_margins(scores: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """y*_l (s_l - theta): positive where label l is on its target side."""
    return signs(target).to(scores.dtype) * (scores - threshold)


def masked_max(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the masked labels per sample; -inf for an empty group (never multiply by 0)."""
    return torch.where(mask, scores, torch.full_like(scores, float("-inf"))).amax(dim=-1)


def masked_min(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, scores, torch.full_like(scores, float("inf"))).amin(dim=-1)


def hinge(value: torch.Tensor) -> torch.Tensor:
    """max(0, value), with -inf (an empty group) giving 0 and no NaN gradient."""
    finite = torch.where(torch.isfinite(value), value, torch.zeros_like(value))
    return torch.where(torch.isfinite(value), finite.clamp_min(0), torch.zeros_like(value))


def ordered_pairs(scores: torch.Tensor, target: torch.Tensor,
                  gap: float = FLOAT_GUARD) -> tuple[torch.Tensor, torch.Tensor]:
    """(how many (i in T, j not in T) pairs have s_i > s_j + gap, whether all of them do)."""
    in_target = target.bool()
    above = scores.unsqueeze(2) > scores.unsqueeze(1) + gap  # [n, i, j] = s_i > s_j + gap
    pairs = in_target.unsqueeze(2) & ~in_target.unsqueeze(1)
    ordered = (above & pairs).sum(dim=(1, 2))
    return ordered.to(scores.dtype), (ordered == pairs.sum(dim=(1, 2))) & in_target.any(dim=1)
