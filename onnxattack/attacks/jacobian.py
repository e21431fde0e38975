"""Scores and their Jacobian for a batch, with one vectorised backward pass; whole or a subset of labels.

Model calls per row (forward and backward each count 1), as AttackResult.model_calls reports them:
- batched-grads: 1 forward + 1 vectorised backward = 2, whatever the number of labels;
- replicated: a forward and a backward of K copies of the row = 2K;
- loop: 1 forward + K separate backward passes = 1 + K.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Function = Callable[[torch.Tensor], torch.Tensor]
JACOBIAN_MODES = ("auto", "batched-grads", "replicated", "loop")


def calls_per_row(mode: str, labels: int) -> int:
    """Model calls per row of one Jacobian of `labels` labels in a resolved mode."""
    if mode == "batched-grads":
        return 2
    if mode == "replicated":
        return 2 * labels
    return 1 + labels


def _batched_grads(scores: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One backward vmapped over the K label directions picked by index [N, K] (-1: none)."""
    valid = (index >= 0).unsqueeze(2).to(scores.dtype)
    one_hot = torch.zeros(*index.shape, scores.shape[1], dtype=scores.dtype, device=scores.device)
    directions = one_hot.scatter_(2, index.clamp_min(0).unsqueeze(2), valid).transpose(0, 1).contiguous()  # [K, N, L]
    (grads,) = torch.autograd.grad(scores, x, grad_outputs=directions, is_grads_batched=True)
    return grads.transpose(0, 1).flatten(2)  # [N, K, d]


def _replicated(fn: Function, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Fallback for graphs vmap cannot trace: one forward of N*K copies, one backward."""
    n, k = index.shape
    copies = x.detach().repeat_interleave(k, dim=0).requires_grad_(True)  # [N*K, ...]
    scores = fn(copies).view(n, k, -1)
    picked = scores.gather(2, index.clamp_min(0).unsqueeze(2)).squeeze(2) * (index >= 0)
    (grads,) = torch.autograd.grad(picked.sum(), copies)
    return grads.view(n, k, -1)


def _loop(scores: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    rows = []
    for column in range(index.shape[1]):
        label = index[:, column]
        picked = scores.gather(1, label.clamp_min(0).unsqueeze(1)).squeeze(1) * (label >= 0)
        (grad,) = torch.autograd.grad(picked.sum(), x, retain_graph=True)
        rows.append(grad.flatten(1))
    return torch.stack(rows, dim=1)


def jacobian_of(fn: Function, x: torch.Tensor, scores: torch.Tensor, x_leaf: torch.Tensor, index: torch.Tensor,
                mode: str = "auto") -> tuple[torch.Tensor, str]:
    """Gradients [N, K, d] of the labels index [N, K] (-1: padding, zero gradient), from a forward
    `scores = fn(x_leaf)` already taken with x_leaf requiring grad; returns the mode that ran."""
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"unknown Jacobian mode {mode!r}")
    if mode in ("auto", "batched-grads"):
        try:
            return _batched_grads(scores, x_leaf, index), "batched-grads"
        except RuntimeError:
            if mode == "batched-grads":
                raise
    if mode in ("auto", "replicated"):
        return _replicated(fn, x, index), "replicated"
    return _loop(scores, x_leaf, index), "loop"


def scores_and_jacobian(fn: Function, x: torch.Tensor, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [N, L], Jacobian [N, L, d]). mode: auto | batched-grads | replicated | loop."""
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"unknown Jacobian mode {mode!r}")
    leaf = x.detach().requires_grad_(True)
    scores = fn(leaf)
    index = torch.arange(scores.shape[1], device=x.device).expand(scores.shape[0], -1)
    jac, _ = jacobian_of(fn, x, scores, leaf, index, mode)
    return scores.detach(), jac


def naive_jacobian(fn: Function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L separate backward passes: the slow reference the benchmark compares against."""
    return scores_and_jacobian(fn, x, "loop")
