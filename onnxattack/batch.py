"""The public entry point: attack a batch of arrays and judge it in onnxruntime.

    model = onnxattack.load("model.onnx", box=(0, 1))
    result = onnxattack.attack_arrays(model, x, onnxattack.MLDeepFool(), target="hide-single")

The pipeline calls the same function batch by batch; the tests and the README do too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .attacks import Attack
from .errors import BadInputError
from .inputs import check_rows
from .loader import LoadedModel, check_sample_shape
from .results import ROW_DATASETS, passthrough_dataset
from .runtime import to_input_dtype
from .scores import Criterion, TopKExclusionCriterion, criterion_for
from .targets import (
    EXCLUSION_STRATEGIES,
    METHOD_DEFAULT_TARGET,
    TargetSpec,
    check_target_file,
    make_exclusion_targets,
    make_targets,
    parse_target,
)
from .types import Task
from .validate import ort_verdict, torch_reached


@dataclass
class BatchResult:
    """One row per input, as stored in the result file: a field per column of results.schema.ROWS."""

    x: np.ndarray
    x_adv: np.ndarray
    scores: np.ndarray
    scores_adv: np.ndarray
    y_pred: np.ndarray
    y_target: np.ndarray
    y_adv: np.ndarray
    success: np.ndarray  # onnxruntime's verdict on x_adv, for attacked rows
    attacked: np.ndarray  # false where the target already held on x
    torch_agrees: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    iterations: np.ndarray
    queries: np.ndarray  # onnxruntime queries per row when gradients are estimated (0 with torch gradients)
    model_calls: np.ndarray  # forward + backward passes the row took part in (0 for skipped rows)
    stall_reason: np.ndarray  # estimated gradients: why the row was stopped early (0: it was not)
    other_inputs: dict[str, np.ndarray] = field(default_factory=dict)  # multi-input models: passed through

    def rows(self) -> dict[str, np.ndarray]:
        """The row datasets of the result file; pass-through inputs as inputs/<name>."""
        rows = {name: getattr(self, name) for name in ROW_DATASETS}
        rows.update({passthrough_dataset(name): value for name, value in self.other_inputs.items()})
        return rows

    @property
    def success_rate(self) -> float:
        attacked = int(self.attacked.sum())
        return float(self.success.sum()) / attacked if attacked else 0.0


def resolve_top_k(model: LoadedModel, spec: TargetSpec | None, requested: int | None) -> int:
    """Ranking: K from the caller, else from top:K, else from the model's metadata, else 1."""
    from_target = spec.k if spec is not None and spec.strategy == "top" else None
    if requested is not None and from_target is not None and requested != from_target:
        raise BadInputError(f"--top-k {requested} contradicts --target top:{from_target}")
    chosen = requested or from_target or int(model.info.metadata.get("top_k", 1))
    if not 1 <= chosen < model.num_labels:
        raise BadInputError(f"--top-k must lie in 1..{model.num_labels - 1}")
    return chosen


def target_spec(text: str | TargetSpec, model: LoadedModel, attack: Attack) -> TargetSpec:
    """The parsed target; 'auto' is the method's own default (Attack.default_target)."""
    if text == METHOD_DEFAULT_TARGET:
        text = attack.default_target
    spec = parse_target(text, model.labels) if isinstance(text, str) else text
    if spec.strategy == "top" and attack.task is not Task.RANKING:
        raise BadInputError("top:K targets are for ranking methods (rank1, rank2, tkml-t)")
    if attack.task is Task.TOP_K_EXCLUSION and (spec.strategy not in EXCLUSION_STRATEGIES or spec.show):
        raise BadInputError(f"{attack.name} takes hide-single, hide-all or '-A,-B' targets: the labels that must "
                            f"leave the top k (K from --top-k)")
    return spec


def judge(model: LoadedModel, attack: Attack, spec: TargetSpec | None, top_k: int | None) -> Criterion:
    """The criterion onnxruntime's verdict is taken with."""
    k = resolve_top_k(model, spec, top_k) if attack.task.ranks else 1
    return criterion_for(attack.task, model.reader, k)


def batch_targets(model: LoadedModel, x: np.ndarray, target: str | TargetSpec | np.ndarray, spec: TargetSpec | None,
                  criterion: Criterion, seed: int, first_index: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(onnxruntime's clean scores, prediction, target, attacked) of checked rows x in the model's dtype
    (pass-through inputs bound): rows whose target already holds are not attacked."""
    clean = model.ort_scores(x)
    predicted = criterion.predict(clean)
    if spec is None:
        goal = check_target_file(np.asarray(target), len(x), model.num_labels)[: len(x)]
    elif criterion.task is Task.TOP_K_EXCLUSION:
        goal = make_exclusion_targets(spec, predicted, clean, seed, first_index=first_index)
    else:
        goal = make_targets(spec, predicted, clean, seed, first_index=first_index)
    if isinstance(criterion, TopKExclusionCriterion):
        check_exclusion_targets(goal, criterion.k, first_index)
    return clean, predicted, goal, ~criterion.reached(clean, goal)


def check_exclusion_targets(goal: np.ndarray, k: int, first_index: int) -> None:
    """Untargeted top-k: every row names at least one label to push out, and leaves k others to take
    the top k; a target no perturbation can reach is refused rather than attacked in vain."""
    sizes = goal.astype(bool).sum(axis=1)
    impossible = (sizes == 0) | (goal.shape[1] - sizes < k)
    if impossible.any():
        row = int(np.flatnonzero(impossible)[0])
        size = int(sizes[row])
        why = ("names no label to push out of the top k" if size == 0 else
               f"pushes {size} of {goal.shape[1]} labels out, leaving fewer than k = {k} to fill the top k")
        raise BadInputError(f"the target of input {first_index + row} {why}")


def attack_arrays(model: LoadedModel, x: np.ndarray, attack: Attack,
                  target: str | TargetSpec | np.ndarray = METHOD_DEFAULT_TARGET, *,
                  box: tuple[float, float] | None = None, seed: int = 0, top_k: int | None = None,
                  first_index: int = 0, source: str = "inputs",
                  criterion: Criterion | None = None,
                  other_inputs: Mapping[str, np.ndarray] | None = None,
                  progress: Callable[[float], None] | None = None) -> BatchResult:
    """Attack the rows of x (the model's own input format) and judge every result in onnxruntime.

    target: a strategy ('hide-single', 'random', 'top:3:best', '+2,-5', ...), 'auto' (the method's
    default) or an [N, L] 0/1 array (untargeted top-k methods: 1 marks a label that must leave the top k).
    other_inputs: a multi-input model's other inputs by name, one row per row of x: they pass through
    unchanged (x is the attacked input, `load(attack_input=...)`).
    Randomness is per input from (seed, first_index + row), so batches and resumes agree.
    Rows whose target already holds are not attacked (x_adv = x, attacked = False).
    progress: told the share of the batch's work done (0..1) as the attack goes.
    """
    box = model.box if box is None else box
    x = np.asarray(x)
    check_rows(x, box, source, first_index)
    check_sample_shape(model.input, tuple(x.shape[1:]), source, model.per_sample)
    others = model.checked_others(other_inputs, len(x), source)
    spec = None if isinstance(target, np.ndarray) else target_spec(target, model, attack)
    criterion = criterion or judge(model, attack, spec, top_k)
    x = to_input_dtype(x, model.input.dtype)
    with model.passthrough.bind(others):  # checked above
        clean, predicted, goal, attacked = batch_targets(model, x, target, spec, criterion, seed, first_index)
        x_adv = x.copy()
        iterations = np.zeros(len(x), dtype=np.int32)
        queries = np.zeros(len(x), dtype=np.int64)
        model_calls = np.zeros(len(x), dtype=np.int64)
        stall_reason = np.zeros(len(x), dtype=np.int8)
        if attacked.any():
            index = np.flatnonzero(attacked)
            victim = model.victim(box)
            victim.progress = progress
            if victim.begin is not None:
                victim.begin(first_index + index)  # per-row query ledger, keyed by the input's index
            with model.passthrough.bind({name: rows[index] for name, rows in others.items()}):
                result = attack(victim, model.as_tensor(x[index]), torch.as_tensor(goal[index], device=model.device),
                                criterion)
            x_adv[index] = to_input_dtype(result.x_adv.detach().cpu().numpy(), model.input.dtype)
            iterations[index] = result.iterations.cpu().numpy()
            model_calls[index] = result.model_calls.cpu().numpy()
            spent, stalled = model.queries_spent(), model.stall_reasons()
            if spent is not None:
                queries[index] = spent
            if stalled is not None:
                stall_reason[index] = stalled
        verdict = ort_verdict(model, criterion, x_adv, goal)
        torch_verdict = torch_reached(model, criterion, x_adv, goal)
        delta = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
        if attack.discrete:  # token ids: l2 and linf both hold the count of changed tokens
            delta = (delta != 0).sum(axis=1, keepdims=True).astype(np.float64)
        return BatchResult(
            x=x, x_adv=x_adv, scores=clean.astype(np.float32), scores_adv=verdict.scores.astype(np.float32),
            y_pred=predicted, y_target=goal, y_adv=verdict.predicted, success=verdict.reached & attacked,
            attacked=attacked, torch_agrees=torch_verdict == verdict.reached,
            l2=np.linalg.norm(delta, axis=1).astype(np.float32), linf=np.abs(delta).max(axis=1).astype(np.float32),
            iterations=iterations, queries=queries, model_calls=model_calls, stall_reason=stall_reason,
            other_inputs=others)
