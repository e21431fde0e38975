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


@dataclass(frozen=True)
class DigitImages:
    images: np.ndarray  # (n, 8, 8) in [0, 1]
    targets: np.ndarray  # (n,) digit classes


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target


def training_digits(shifted: bool = True) -> DigitImages:
    """The digit images that training mosaics may use; with `shifted`, also each moved by one pixel
    up, down, left and right (zero filled), which teaches the nets to read digits from unseen writers."""
    images, targets = _load_digits()
    images, targets = images[:_TRAIN_SOURCE], targets[:_TRAIN_SOURCE]
    if not shifted:
        return DigitImages(images, targets)
    copies = [images] + [_shift(images, dy, dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
    return DigitImages(np.concatenate(copies), np.tile(targets, len(copies)))


def _shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    moved = np.zeros_like(images)
    height, width = images.shape[1:]
    moved[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[:, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return moved


def random_mosaics(source: DigitImages, count: int, rng: np.random.Generator,
                   digits_per_mosaic: tuple[int, int] = (1, 4)) -> tuple[np.ndarray, np.ndarray]:
    """Like `_mosaics`, vectorised, for fresh training mosaics every epoch."""
    counts = np.bincount(source.targets, minlength=10)
    by_class = np.argsort(source.targets, kind="stable")
    class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    shown = rng.integers(digits_per_mosaic[0], digits_per_mosaic[1] + 1, size=count)
    classes = np.argsort(rng.random((count, 10)), axis=1)[:, :4]  # distinct digits; the first `shown` are used
    cells = np.argsort(rng.random((count, 4)), axis=1)
    picked = by_class[class_start[classes] + (rng.random((count, 4)) * counts[classes]).astype(np.int64)]
    used = np.arange(4) < shown[:, None]
    tiles = np.where(used[:, :, None, None], source.images[picked], 0.0).astype(np.float32)
    grid = np.zeros_like(tiles)
    np.put_along_axis(grid, cells[:, :, None, None], tiles, axis=1)  # cell k: row k // 2, column k % 2
    x = grid.reshape(count, 2, 2, 8, 8).transpose(0, 1, 3, 2, 4).reshape(count, 1, 16, 16)
    y = np.zeros((count, 10), dtype=np.int8)
    np.put_along_axis(y, classes, used.astype(np.int8), axis=1)
    return x, y


def digit_mosaics(n_train: int = 6000, n_test: int = 1000, digits_per_mosaic: tuple[int, int] = (1, 4),
                  seed: int = 0) -> Split:
    images, targets = _load_digits()
    rng = np.random.default_rng(seed)
    x_train, y_train = _mosaics(images[:_TRAIN_SOURCE], targets[:_TRAIN_SOURCE], n_train, digits_per_mosaic, rng)
    x_test, y_test = _mosaics(images[_TRAIN_SOURCE:], targets[_TRAIN_SOURCE:], n_test, digits_per_mosaic, rng)
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
