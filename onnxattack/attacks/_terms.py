"""Masked group extremes and a hinge that tolerate empty groups, shared by the ranking losses."""

from __future__ import annotations

import torch

from ..scores import TopKExclusionCriterion


def masked_max(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over the masked labels per sample; -inf for an empty group (never multiply by 0)."""
    return torch.where(mask, scores, torch.full_like(scores, float("-inf"))).amax(dim=-1)


def masked_min(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, scores, torch.full_like(scores, float("inf"))).amin(dim=-1)


def hinge(value: torch.Tensor) -> torch.Tensor:
    """max(0, value), with -inf (an empty group) giving 0 and no NaN gradient."""
    finite = torch.where(torch.isfinite(value), value, torch.zeros_like(value))
    return torch.where(torch.isfinite(value), finite.clamp_min(0), torch.zeros_like(value))


def untargeted_top_k_term(scores: torch.Tensor, target: torch.Tensor, criterion: TopKExclusionCriterion,
                          margin: float) -> torch.Tensor:
    """sum_{j in S} max(0, margin + s_j - s'_[k]), s'_[k] the k-th largest score outside S (a row with
    fewer than k labels outside S cannot succeed; its term is 0)."""
    leave = target.bool()
    terms = hinge(margin + scores - criterion.kth_outside(scores, target).unsqueeze(-1))
    return torch.where(leave, terms, torch.zeros_like(terms)).sum(dim=-1)
