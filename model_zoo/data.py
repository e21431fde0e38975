"""Real multi-label data from packages: digit mosaics (scikit-learn's digits) and Yeast (river)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# The first 1200 of scikit-learn's 1797 digit images feed training mosaics, the rest test mosaics,
# so no test mosaic shows a digit image seen in training.
_TRAIN_SOURCE = 1200


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]


def _mosaics(images: np.ndarray, targets: np.ndarray, count: int, digits_per_mosaic: tuple[int, int],
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """2x2 mosaics of 8x8 digits (16x16, values in [0, 1]); labels = the set of digits shown."""
    by_class = [np.flatnonzero(targets == c) for c in range(10)]
    x = np.zeros((count, 1, 16, 16), dtype=np.float32)
    y = np.zeros((count, 10), dtype=np.int8)
    for i in range(count):
        shown = rng.integers(digits_per_mosaic[0], digits_per_mosaic[1] + 1)
        classes = rng.choice(10, size=shown, replace=False)
        cells = rng.choice(4, size=shown, replace=False)
        for digit, cell in zip(classes, cells, strict=True):
            image = images[rng.choice(by_class[digit])]
            row, col = divmod(int(cell), 2)
            x[i, 0, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = image
            y[i, digit] = 1
    return x, y


def digit_mosaics(n_train: int = 6000, n_test: int = 1000, digits_per_mosaic: tuple[int, int] = (1, 4),
                  seed: int = 0) -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    x_train, y_train = _mosaics(images[:_TRAIN_SOURCE], digits.target[:_TRAIN_SOURCE], n_train,
                                digits_per_mosaic, rng)
    x_test, y_test = _mosaics(images[_TRAIN_SOURCE:], digits.target[_TRAIN_SOURCE:], n_test,
                              digits_per_mosaic, rng)
    return Split(x_train, y_train, x_test, y_test, list(DIGIT_NAMES))


def yeast(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """The Yeast benchmark (2417 genes, 103 features, 14 labels) as river ships it."""
    from river import datasets

    features, labels, names = [], [], None
    for x, y in datasets.Yeast():
        features.append(list(x.values()))
        labels.append([int(v) for v in y.values()])
        names = names or list(y.keys())
    x_all = np.asarray(features, dtype=np.float32)
    y_all = np.asarray(labels, dtype=np.int8)
    order = np.random.default_rng(seed).permutation(len(x_all))
    cut = int(len(order) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    return Split(x_all[train], y_all[train], x_all[test], y_all[test], list(names or []))
