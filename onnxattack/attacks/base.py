"""The attack interface: a victim (torch graph + score reader + box) in, an AttackResult out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..scores import RankingCriterion, ScoreReader, ThresholdCriterion
from ..types import Task


@dataclass
class Victim:
    """What an attack sees: a differentiable attack tensor, how to read it, and the valid box."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    reader: ScoreReader
    box: tuple[float, float]
    top_k: int = 1

    def attack_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.reader.attack_space(self.logits(x))

    @property
    def threshold(self) -> float:
        return self.reader.attack_threshold

    def criterion(self, task: Task) -> ThresholdCriterion | RankingCriterion:
        """The success rule stated on the attack tensor (same decisions as on the real output)."""
        if task is Task.RANKING:
            return RankingCriterion(k=self.top_k)
        return ThresholdCriterion(threshold=self.threshold)


@dataclass
class AttackResult:
    """Per sample: the adversarial input, torch's verdict, iterations used, and the norms."""

    x_adv: torch.Tensor
    success: torch.Tensor  # bool [N], judged on the torch graph; the pipeline re-judges in onnxruntime
    iterations: torch.Tensor  # int [N]
    l2: torch.Tensor
    linf: torch.Tensor

    @classmethod
    def from_inputs(cls, x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor,
                    iterations: torch.Tensor) -> AttackResult:
        delta = (x_adv - x).flatten(1)
        return cls(x_adv=x_adv.detach(), success=success, iterations=iterations,
                   l2=delta.norm(dim=1), linf=delta.abs().amax(dim=1))


class Attack(ABC):
    """One method. Subclasses hold their hyperparameters and implement `run`."""

    name: str
    task: Task

    @abstractmethod
    def run(self, victim: Victim, x: torch.Tensor, target: torch.Tensor) -> AttackResult:
        """Attack a batch: x [N, ...] inside the box, target [N, L] of 0/1 (1 = must be positive)."""

    def params(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}
