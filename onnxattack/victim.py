"""What an attack sees of a model: a differentiable attack tensor, how to read it, the valid box."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .scores import ScoreReader

# (x [m, ...], which rows of the attacked batch they are [m]) -> (attack-space scores [m, L], J [m, L, d])
JacobianFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Victim:
    """logits: x -> the attack tensor (differentiable); reader: how it maps to the real scores.

    jacobian: a victim whose gradients are estimated supplies its own Jacobian (ML-DeepFool asks
    for it); None means autograd through `logits`. begin: called by the attack entry point with the
    rows of the batch about to be attacked (per-row query ledgers start there).
    """

    logits: Callable[[torch.Tensor], torch.Tensor]
    reader: ScoreReader
    box: tuple[float, float]
    jacobian: JacobianFn | None = None
    begin: Callable[[np.ndarray], None] | None = None

    def attack_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.reader.attack_space(self.logits(x))
