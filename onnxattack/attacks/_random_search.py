"""What the black-box methods share: a sample viewed as channels x a 2-D plane, windows placed per row
inside it, and one counted onnxruntime call for the candidates of a step.

Layout (`plane`): a sample [F] is one channel of a 1 x F plane (windows are 1-D runs of features),
[T, F] one channel of a T x F plane, [..., H, W] (channels first, e.g. [C, H, W]) prod(...) channels of
an H x W plane. Windows span the plane's two axes and every channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..scores import ThresholdCriterion
from .base import Victim

DEFAULT_BUDGET = 10_000  # queries per row when the victim states none (a library caller's own victim)


@dataclass(frozen=True)
class Plane:
    channels: int
    height: int
    width: int

    @classmethod
    def of(cls, sample_shape: torch.Size | tuple[int, ...]) -> Plane:
        dims = tuple(int(d) for d in sample_shape) or (1,)
        if len(dims) == 1:
            return cls(1, 1, dims[0])
        if len(dims) == 2:
            return cls(1, dims[0], dims[1])
        return cls(math.prod(dims[:-2]), dims[-2], dims[-1])

    @property
    def area(self) -> int:
        return self.height * self.width

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """[n, ...] -> [n, C, H, W] (a view)."""
        return x.reshape(len(x), self.channels, self.height, self.width)

    def window(self, p: float, least: int = 1) -> tuple[int, int]:
        """The window holding a share p of the plane: a square of side round(sqrt(p H W)) (a run of
        round(p W) on a 1 x W plane), at least `least`, at most the plane."""
        if self.height == 1:
            return 1, min(self.width, max(least, round(p * self.width)))
        side = min(self.height, self.width, max(least, round(math.sqrt(p * self.area))))
        return side, side

    def place(self, n: int, size: tuple[int, int], generator: torch.Generator | None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A window of `size` at a uniform random position per row: (mask bool [n, 1, H, W], position of
        each plane cell inside its row's window [n, 1, H, W, 2], clamped into the window)."""
        rows = torch.randint(0, self.height - size[0] + 1, (n, 1, 1), generator=generator, device=device)
        cols = torch.randint(0, self.width - size[1] + 1, (n, 1, 1), generator=generator, device=device)
        i = torch.arange(self.height, device=device).view(1, -1, 1) - rows
        j = torch.arange(self.width, device=device).view(1, 1, -1) - cols
        i, j = i.expand(n, -1, self.width), j.expand(n, self.height, -1)
        mask = (i >= 0) & (i < size[0]) & (j >= 0) & (j < size[1])
        inside = torch.stack([i.clamp(0, size[0] - 1), j.clamp(0, size[1] - 1)], dim=-1)
        return mask.unsqueeze(1), inside.unsqueeze(1)


def halving_share(p_init: float, spent: int, budget: int) -> float:
    """The Square Attack's schedule: the share p halves after 10, 50, 200, 500, 1000, 2000, 4000, 6000
    and 8000 of 10,000 iterations; here those points are the same fractions of the query budget."""
    progress = int(spent / max(budget, 1) * 10_000)
    halvings = sum(progress > point for point in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def random_signs(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


def hinge_query(victim: Victim, labels: ThresholdCriterion, wanted: float, points: torch.Tensor,
                target: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One onnxruntime call for `points` (row `rows[i]` of the batch each): (the ML-CW hinge
    sum_l max(0, wanted - y*_l (s_l - theta)) [m], success [m] as the criterion decides)."""
    with torch.no_grad(), victim.on_rows(rows):
        scores = victim.attack_space(points)
    loss = (wanted - labels.label_margins(scores, target)).clamp_min(0).sum(dim=1)
    return loss, labels.progress(scores, target)[1]

