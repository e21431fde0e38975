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


def _conv_bn_relu(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU()]


class CellMaxCNN(nn.Module):
    """Scores every 8x8 cell of a 1x16x16 mosaic per label; a label's score is that of its best cell.

    The max over cells mirrors how the labels are made (a digit is present when any cell shows it), so the
    net learns one digit classifier instead of every combination. Sigmoid probabilities in eval mode.
    """

    def __init__(self, num_labels: int = 10, widths: tuple[int, int, int] = (16, 32, 48)) -> None:
        super().__init__()
        first, second, third = widths
        self.cells = nn.Sequential(
            *_conv_bn_relu(1, first), nn.MaxPool2d(2),  # 8x8
            *_conv_bn_relu(first, second), nn.MaxPool2d(2),  # 4x4
            *_conv_bn_relu(second, third), nn.MaxPool2d(2),  # 2x2: one position per cell
            nn.Conv2d(third, num_labels, 1),
        )
        # A fixed 2x2 MaxPool rather than an adaptive one: it exports as a plain ONNX MaxPool.
        self.best_cell = nn.Sequential(nn.MaxPool2d(2), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.best_cell(self.cells(x))
        return scores if self.training else torch.sigmoid(scores)


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


class TopicTagger(nn.Module):
    """Token ids + attention mask -> per-topic probabilities: an embedding, the mean over the attended
    positions, a hidden layer, a sigmoid head (in eval mode; logits while training)."""

    def __init__(self, vocab: int, num_labels: int, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_labels))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        logits = self.body(pooled)
        return logits if self.training else torch.sigmoid(logits)
