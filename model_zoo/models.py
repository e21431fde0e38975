"""The zoo's network definitions and losses."""

from __future__ import annotations

import torch
from torch import nn


class MosaicCNN(nn.Module):
    """A small CNN for 1x16x16 mosaics; `head` is 'sigmoid' (probabilities) or None (raw scores)."""

    def __init__(self, num_labels: int = 10, head: str | None = "sigmoid") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                                        nn.Linear(64, num_labels))
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.classifier(self.features(x))
        return torch.sigmoid(scores) if self.head == "sigmoid" and not self.training else scores


class TabularMLP(nn.Module):
    """Standardises raw features inside the graph, then a two-layer MLP giving logits."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_labels: int, hidden: int = 128) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = nn.Sequential(nn.Linear(mean.numel(), hidden), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(hidden, num_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def pairwise_ranking_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over (relevant, irrelevant) label pairs of log(1 + exp(s_irrelevant - s_relevant))."""
    positive = labels.bool()
    differences = scores.unsqueeze(1) - scores.unsqueeze(2)  # [b, i, j] = s_j - s_i
    pairs = positive.unsqueeze(2) & ~positive.unsqueeze(1)  # i relevant, j irrelevant
    losses = nn.functional.softplus(differences)[pairs]
    return losses.mean()
