"""Success as onnxruntime sees it on the original model, torch's agreement, and transfer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .labelmatch import LabelMatch
from .loader import LoadedModel
from .runtime import to_input_dtype
from .scores import Criterion


@dataclass(frozen=True)
class Verdict:
    scores: np.ndarray  # float32 [N, L], onnxruntime
    predicted: np.ndarray  # int8 [N, L]
    reached: np.ndarray  # bool [N]: the target holds on these scores


def ort_verdict(model: LoadedModel, criterion: Criterion, x: np.ndarray, target: np.ndarray) -> Verdict:
    """Re-score x with onnxruntime (the scorer casts to the model's own input dtype): the verdict
    that is recorded."""
    scores = model.ort_scores(x)
    return Verdict(scores, criterion.predict(scores), criterion.reached(scores, target))


def torch_reached(model: LoadedModel, criterion: Criterion, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The torch graph's verdict on the same (dtype-cast) inputs, to count disagreements."""
    with torch.no_grad():
        scores = model.torch_scores(model.as_tensor(to_input_dtype(x, model.input.dtype)))
    return criterion.reached(scores.float().cpu().numpy(), target)


@dataclass(frozen=True)
class TransferResult:
    model_name: str
    scores_adv: np.ndarray
    y_adv: np.ndarray
    success: np.ndarray  # the other model's prediction on x_adv reaches the target
    flipped: np.ndarray  # its prediction on x_adv differs from its prediction on x


def transfer(model: LoadedModel, criterion: Criterion, x: np.ndarray, x_adv: np.ndarray,
             target: np.ndarray, match: LabelMatch | None = None) -> TransferResult:
    """The other model's verdict on x_adv (already in its input space). With `match`, the target (in the
    reference's labels) is judged on the shared labels only; scores_adv and y_adv come back in the
    reference's label order, NaN / -1 where the other model lacks a label."""
    if match is None or match.identity:
        clean = ort_verdict(model, criterion, x, target)
        adversarial = ort_verdict(model, criterion, x_adv, target)
        flipped = np.any(clean.predicted != adversarial.predicted, axis=1)
        return TransferResult(model.name, adversarial.scores, adversarial.predicted, adversarial.reached, flipped)
    shared_target = match.reference_columns(target)
    clean_scores = match.other_columns(model.ort_scores(x))
    scores = match.other_columns(model.ort_scores(x_adv))
    predicted = criterion.predict(scores)
    flipped = np.any(criterion.predict(clean_scores) != predicted, axis=1)
    return TransferResult(model.name, match.in_reference_space(scores, np.nan).astype(np.float32),
                          match.in_reference_space(predicted.astype(np.int8), -1),
                          criterion.reached(scores, shared_target), flipped)
