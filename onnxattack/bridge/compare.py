"""Two forms of the same graph (untraced and traced, contiguous and channels-last) side by side: do they
compute the same scores and input gradients, and which runs a fwd+bwd faster. Shared by trace.py and
layout.py, which each swap a graph for a faster form only when both answers say so."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch

Graph = Callable[[torch.Tensor], torch.Tensor]


def scores_and_gradient(fn: Graph, x: torch.Tensor,
                        weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """fn(x), and the gradient of sum(fn(x) * weights) (all ones by default) with respect to x."""
    leaf = x.detach().requires_grad_(True)
    z = fn(leaf)
    w = torch.ones_like(z) if weights is None else weights
    (grad,) = torch.autograd.grad((z * w).sum(), leaf)
    return z.detach(), grad


def close(mine: torch.Tensor, theirs: torch.Tensor, tolerance: float) -> bool:
    """Same shape, dtype and non-finite positions; finite values within tolerance * (1 + max |theirs|)."""
    if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
        return False
    if not bool(torch.equal(torch.isfinite(mine), torch.isfinite(theirs))):
        return False
    finite = torch.isfinite(theirs)
    scale = float(theirs[finite].abs().max()) if bool(finite.any()) else 0.0
    return bool(((mine - theirs)[finite].abs() <= tolerance * (1 + scale)).all())


def agrees(reference: Graph, candidate: Graph, x: torch.Tensor, tolerance: float, gradient_tolerance: float,
           weights: torch.Tensor | None = None) -> bool:
    """The candidate's scores and input gradients on x are close to the reference's."""
    theirs, their_grad = scores_and_gradient(reference, x, weights)
    mine, my_grad = scores_and_gradient(candidate, x, weights)
    return close(mine, theirs, tolerance) and close(my_grad, their_grad, gradient_tolerance)


def fastest_passes(functions: Mapping[str, Graph], x: torch.Tensor, repeats: int,
                   settled: Callable[[dict[str, float]], bool] | None = None) -> dict[str, float]:
    """The fastest fwd+bwd of each function on x, interleaved over `repeats` rounds (a shared machine's
    stalls only ever add time); from the second round on, `settled(fastest so far)` may end it early."""
    spent: dict[str, list[float]] = {name: [] for name in functions}
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    with torch.enable_grad():
        for repeat in range(repeats):
            for name, fn in functions.items():
                sync()
                started = time.perf_counter()
                scores_and_gradient(fn, x)
                sync()
                spent[name].append(time.perf_counter() - started)
            if repeat >= 1 and settled is not None and settled({name: min(v) for name, v in spent.items()}):
                break
    return {name: min(values) for name, values in spent.items()}
