"""Scores and their full Jacobian for a batch, with one vectorised backward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch

Function = Callable[[torch.Tensor], torch.Tensor]


def _batched_grads(fn: Function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward, then one backward vmapped over the L label directions."""
    x = x.detach().requires_grad_(True)
    scores = fn(x)
    labels = scores.shape[1]
    directions = torch.eye(labels, dtype=scores.dtype, device=scores.device)
    directions = directions.unsqueeze(1).expand(labels, *scores.shape)  # [L, N, L]
    (grads,) = torch.autograd.grad(scores, x, grad_outputs=directions, is_grads_batched=True)
    return scores.detach(), grads.transpose(0, 1).flatten(2)  # [N, L, d]


def _replicated_batch(fn: Function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback for graphs vmap cannot trace: one forward of N*L copies, one backward."""
    n = x.shape[0]
    with torch.no_grad():
        labels = fn(x[:1]).shape[1]
    copies = x.detach().repeat_interleave(labels, dim=0).requires_grad_(True)  # [N*L, ...]
    scores = fn(copies).view(n, labels, labels)
    picked = torch.diagonal(scores, dim1=1, dim2=2)  # copy l of sample n keeps label l
    (grads,) = torch.autograd.grad(picked.sum(), copies)
    return picked.detach(), grads.view(n, labels, -1)


def scores_and_jacobian(fn: Function, x: torch.Tensor, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [N, L], Jacobian [N, L, d]). mode: auto | batched-grads | replicated | loop."""
    if mode in ("auto", "batched-grads"):
        try:
            return _batched_grads(fn, x)
        except RuntimeError:
            if mode == "batched-grads":
                raise
    if mode in ("auto", "replicated"):
        return _replicated_batch(fn, x)
    if mode == "loop":
        return naive_jacobian(fn, x)
    raise ValueError(f"unknown Jacobian mode {mode!r}")


def naive_jacobian(fn: Function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L separate backward passes: the slow reference the benchmark compares against."""
    x = x.detach().requires_grad_(True)
    scores = fn(x)
    rows = []
    for label in range(scores.shape[1]):
        (grad,) = torch.autograd.grad(scores[:, label].sum(), x, retain_graph=True)
        rows.append(grad.flatten(1))
    return scores.detach(), torch.stack(rows, dim=1)
