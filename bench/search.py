"""The constant search, side by side: new default vs exhaustive (10 x 1000, no early stop) vs the
published reference procedure, on the same inputs and targets; success judged by onnxruntime."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from onnxattack.zoo.build import build
from onnxattack.zoo.sample_inputs import test_inputs

from onnxattack.attacks import Attack, MLCarliniWagner, RankI
from onnxattack.loader import LoadedModel, load
from onnxattack.scores import Criterion, criterion_for
from onnxattack.targets import make_targets, parse_target
from onnxattack.types import Task

from .reference import reference_ml_cw

# (model, method, target, box)
CASES = [
    ("digits-mosaic", "ml-cw", "hide-single", (0.0, 1.0)),
    ("digits-mosaic", "ml-cw", "random", (0.0, 1.0)),
    ("yeast-mlp", "ml-cw", "random", (-1.0, 1.0)),
    ("digits-ranker", "rank1", "top:3:random", (0.0, 1.0)),
]


@dataclass
class Outcome:
    success: np.ndarray  # onnxruntime's verdict
    l2: np.ndarray
    calls: np.ndarray
    seconds: float

    def summary(self, rows: np.ndarray) -> dict:
        won = self.success & rows
        return {"success": float(self.success.mean()), "mean_l2": float(self.l2[won].mean()) if won.any() else None,
                "mean_calls": float(self.calls.mean()), "seconds": round(self.seconds, 2)}


@dataclass
class Case:
    model: LoadedModel
    x: torch.Tensor
    target: torch.Tensor
    criterion: Criterion
    name: str

    def judge(self, x_adv: torch.Tensor, calls: torch.Tensor, seconds: float) -> Outcome:
        scores = self.model.ort_scores(x_adv.detach().cpu().numpy())
        success = self.criterion.reached(scores, self.target.cpu().numpy())
        l2 = (x_adv - self.x).flatten(1).norm(dim=1).detach().cpu().numpy()
        return Outcome(success, l2, calls.cpu().numpy(), seconds)

    def run(self, attack: Attack) -> Outcome:
        started = time.perf_counter()
        result = attack(self.model.victim(self.model.box), self.x, self.target, self.criterion)
        return self.judge(result.x_adv, result.model_calls, time.perf_counter() - started)

    def reference(self) -> Outcome:
        started = time.perf_counter()
        victim = self.model.victim(self.model.box)
        result = reference_ml_cw(victim.logits, self.x, self.target, victim.box, victim.reader.attack_threshold,
                                 victim.reader.head == "softmax")
        return self.judge(result.x_adv, result.model_calls, time.perf_counter() - started)


def make_case(model_name: str, method: str, target_text: str, box: tuple[float, float], count: int,
              device: str) -> Case:
    model = load(build(model_name).path, device=device, box=box)
    x = test_inputs(model_name, count)
    task = Task.RANKING if method.startswith("rank") else Task.CLASSIFICATION
    criterion = criterion_for(task, model.reader, 3)
    clean = model.ort_scores(x)
    target = make_targets(parse_target(target_text, model.labels), criterion.predict(clean), clean, 0)
    attacked = ~criterion.reached(clean, target)
    return Case(model, model.as_tensor(x[attacked]), torch.as_tensor(target[attacked], device=model.device),
                criterion, f"{model_name} {method} {target_text}")


def attack_for(method: str, **options: object) -> Attack:
    return (RankI if method == "rank1" else MLCarliniWagner)(**options)  # type: ignore[arg-type]


def measure(count: int, device: str, reference: bool = True, exhaustive_iter: int = 1000) -> dict:
    """Per case: the default, the exhaustive search and (ML-CW) the reference; the ratios the issue asks."""
    cases: dict[str, dict] = {}
    for model_name, method, target_text, box in CASES:
        case = make_case(model_name, method, target_text, box, count, device)
        default = case.run(attack_for(method))
        exhaustive = case.run(attack_for(method, exhaustive=True, max_iter=exhaustive_iter))
        both = default.success & exhaustive.success
        entry = {
            "default": default.summary(both), "exhaustive": exhaustive.summary(both),
            "l2_ratio": float(default.l2[both].mean() / exhaustive.l2[both].mean()) if both.any() else None,
            "calls_ratio": float(default.calls.sum() / exhaustive.calls.sum()),
            "success_at_least_exhaustive": bool(default.success.mean() >= exhaustive.success.mean()),
        }
        if reference and method == "ml-cw":
            ref = case.reference()
            shared = default.success & ref.success
            entry["reference"] = ref.summary(shared)
            entry["default_vs_reference"] = default.summary(shared)
            entry["reference_calls_ratio"] = float(default.calls.sum() / ref.calls.sum())
            entry["reference_l2_ratio"] = (float(default.l2[shared].mean() / ref.l2[shared].mean())
                                           if shared.any() else None)
        cases[case.name] = entry
    return cases


BUDGETS = (250, 500, 1000, 2000)


def budget_curve(count: int, device: str, budgets: tuple[int, ...] = BUDGETS, exhaustive_iter: int = 1000) -> dict:
    """ML-CW at --budget CALLS per row (digits-mosaic hide-single): success and mean L2 per budget, and whether
    each dominates the published procedure's point (the exhaustive 10 x max_iter search) and the reference
    code's: success >= and mean L2 <= (on the rows both reach) at fewer mean calls."""
    case = make_case("digits-mosaic", "ml-cw", "hide-single", (0.0, 1.0), count, device)
    points = {"published": case.run(attack_for("ml-cw", exhaustive=True, max_iter=exhaustive_iter)),
              "reference": case.reference()}
    curve: dict[str, dict] = {}
    for budget in budgets:
        outcome = case.run(attack_for("ml-cw", budget=budget))
        entry = {"budget": budget, **outcome.summary(outcome.success)}
        for name, point in points.items():
            shared = outcome.success & point.success
            l2_ratio = float(outcome.l2[shared].mean() / point.l2[shared].mean()) if shared.any() else None
            entry[f"dominates_{name}"] = bool(outcome.success.mean() >= point.success.mean()
                                              and l2_ratio is not None and l2_ratio <= 1.0
                                              and outcome.calls.mean() <= point.calls.mean())
            entry[f"l2_ratio_{name}"] = l2_ratio
        curve[str(budget)] = entry
    return {"case": case.name, "rows": int(case.x.shape[0]), "curve": curve,
            **{name: point.summary(point.success) for name, point in points.items()}}
