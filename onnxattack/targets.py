"""Target label vectors: the strategies of the paper's line of work, and the target parser.

A target is a full 0/1 label vector (for ranking methods, the target set T). Randomness is
drawn per input from (seed, input index), so targets do not depend on batch boundaries and a
resumed run reproduces them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import BadInputError

STRATEGIES = ("hide-single", "hide-all", "random", "extreme")
TOP_MODES = ("best", "random", "worst")
METHOD_DEFAULT_TARGET = "auto"  # resolved to the attack's own default_target before parsing
# Untargeted top-k (Task.TOP_K_EXCLUSION): the strategies that name labels to push out of the top k.
EXCLUSION_STRATEGIES = ("hide-single", "hide-all", "explicit")


@dataclass(frozen=True)
class TargetSpec:
    strategy: str  # one of STRATEGIES, "explicit" or "top"
    show: tuple[int, ...] = field(default_factory=tuple)
    hide: tuple[int, ...] = field(default_factory=tuple)
    k: int | None = None
    mode: str = "best"

    def describe(self) -> str:
        if self.strategy == "explicit":
            return ",".join([f"+{i}" for i in self.show] + [f"-{i}" for i in self.hide])
        if self.strategy == "top":
            return f"top:{self.k}:{self.mode}"
        return self.strategy


def _is_index(token: str) -> bool:
    """Plain ASCII digits: int() would also take '+3', '1_0', ' 3' and other scripts' digits."""
    return token.isascii() and token.isdigit()


def _label_list(labels: list[str], shown: int = 12) -> str:
    """A short one-line listing of the labels, for error messages (names may hold commas, newlines)."""
    names = ", ".join(repr(label) for label in labels[:shown])
    return names + (f", ... ({len(labels)} labels)" if len(labels) > shown else "")


def _label_index(token: str, labels: list[str]) -> int:
    """A label by name, else by index; a name wins where it could also read as an index."""
    if token in labels:
        return labels.index(token)
    if not _is_index(token):
        raise BadInputError(f"unknown label {token!r} in --target (labels: {_label_list(labels)})")
    index = int(token)
    if not 0 <= index < len(labels):
        raise BadInputError(f"label index {index} in --target is out of range 0..{len(labels) - 1}")
    return index


def parse_target(text: str, labels: list[str]) -> TargetSpec:
    """'hide-single' | 'hide-all' | 'random' | 'extreme' | '+A,-B,...' | 'top:K[:best|random|worst]'."""
    text = text.strip()
    if text in STRATEGIES:
        return TargetSpec(text)
    if text.startswith("top:"):
        parts = text.split(":")
        if len(parts) not in (2, 3) or not _is_index(parts[1]) or int(parts[1]) < 1:
            raise BadInputError(f"bad --target {text!r}: expected top:K or top:K:best|random|worst")
        k = int(parts[1])
        mode = parts[2] if len(parts) == 3 else "best"
        if mode not in TOP_MODES:
            raise BadInputError(f"bad --target {text!r}: mode must be one of {', '.join(TOP_MODES)}")
        if 2 * k > len(labels):  # T is K labels outside the predicted top K: 2K labels in all
            raise BadInputError(f"bad --target {text!r}: K must be below the number of labels ({len(labels)}) "
                                f"and leave K labels outside the predicted top K (K <= {len(labels) // 2})")
        return TargetSpec("top", k=k, mode=mode)
    show: list[int] = []
    hide: list[int] = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        if token[0] not in "+-" or len(token) < 2:
            known = ", ".join(STRATEGIES)
            raise BadInputError(f"bad --target {text!r}: expected {known}, top:K[:mode], or "
                                f"labels to show and hide like '+3,-7'")
        (show if token[0] == "+" else hide).append(_label_index(token[1:], labels))
    if not show and not hide:
        raise BadInputError("--target names no label")
    if set(show) & set(hide):
        raise BadInputError(f"bad --target {text!r}: a label is both shown and hidden")
    return TargetSpec("explicit", show=tuple(show), hide=tuple(hide))


def _one_target(spec: TargetSpec, predicted: np.ndarray, scores: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    target = predicted.copy()
    positives, negatives = np.flatnonzero(predicted == 1), np.flatnonzero(predicted == 0)
    if spec.strategy == "hide-single" and positives.size:
        target[rng.choice(positives)] = 0
    elif spec.strategy == "hide-all":
        target[:] = 0
    elif spec.strategy == "random":
        if positives.size:
            target[rng.choice(positives)] = 0
        if negatives.size:
            target[rng.choice(negatives)] = 1
    elif spec.strategy == "extreme":
        target = 1 - predicted
    elif spec.strategy == "explicit":
        target[list(spec.show)] = 1
        target[list(spec.hide)] = 0
    elif spec.strategy == "top":
        outside = negatives
        k = spec.k or 1
        if outside.size < k:  # the parser rules this out for a top-K prediction
            raise BadInputError(f"top:{k} needs {k} labels outside the predicted set; only {outside.size} are")
        if spec.mode == "random":
            chosen = rng.choice(outside, size=k, replace=False)
        else:
            order = outside[np.argsort(-scores[outside], kind="stable")]
            chosen = order[:k] if spec.mode == "best" else order[-k:]
        target[:] = 0
        target[chosen] = 1
    return target.astype(np.int8)


def make_targets(spec: TargetSpec, predicted: np.ndarray, scores: np.ndarray, seed: int,
                 first_index: int = 0) -> np.ndarray:
    """Target vectors [N, L] for a batch whose first row is input number `first_index`.

    For 'top', `predicted` is the clean top-K set and T is K labels outside it, chosen by
    score (best: highest, worst: lowest) or at random.
    """
    predicted = np.asarray(predicted).astype(np.int8)  # bool predictions too: `1 - bool` is refused
    scores = np.asarray(scores)
    if predicted.ndim != 2 or scores.shape != predicted.shape:
        raise ValueError(f"predictions {list(predicted.shape)} and scores {list(scores.shape)} must be [N, L] alike")
    rows = [
        _one_target(spec, predicted[i], scores[i], np.random.default_rng([seed, first_index + i]))
        for i in range(len(predicted))
    ]
    return np.stack(rows) if rows else np.zeros_like(predicted, dtype=np.int8)


def make_exclusion_targets(spec: TargetSpec, predicted: np.ndarray, scores: np.ndarray, seed: int,
                           first_index: int = 0) -> np.ndarray:
    """Untargeted top-k targets [N, L]: 1 marks a label that must leave the top k.

    `predicted` is the clean top-k set. hide-single: one of its labels, drawn per input as for
    classification; hide-all: all of them; explicit: the labels given with '-' (labels named with
    '+' are refused by the caller)."""
    predicted = np.asarray(predicted).astype(np.int8)
    if spec.strategy == "explicit":
        leave = np.zeros_like(predicted)
        leave[:, list(spec.hide)] = 1
        return leave
    kept = make_targets(spec, predicted, scores, seed, first_index)
    return (predicted & (1 - kept)).astype(np.int8)


def check_target_file(targets: np.ndarray, count: int | None, num_labels: int) -> np.ndarray:
    """Validate a user's (N, L) 0/1 target array (N >= count); the rows come back as int8."""
    if not isinstance(targets, np.ndarray):  # np.load of an .npz gives an archive, not an array
        raise BadInputError(f"--target-file must hold one array (.npy), not {type(targets).__name__}")
    if targets.dtype.kind not in "biuf":
        raise BadInputError(f"--target-file holds {targets.dtype} values; expected 0 and 1")
    if targets.ndim != 2 or targets.shape[1] != num_labels:
        raise BadInputError(f"--target-file holds shape {list(targets.shape)}, expected (N, {num_labels})")
    if count is not None and targets.shape[0] < count:
        raise BadInputError(f"--target-file has {targets.shape[0]} rows for {count} inputs")
    if not np.isin(targets, (0, 1)).all():
        raise BadInputError("--target-file must hold only 0 and 1")
    return targets.astype(np.int8)
