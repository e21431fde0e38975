"""Estimated gradients on models that never become a torch graph: ML-CW hide-single on Yeast.

Trains scikit-learn random forests (one forest per label, OneVsRestClassifier; with --multioutput
also one forest on the 2-D y, exported by skl2onnx as [L, N, 2] probabilities and stacked to
[N, L] by positive_class_output; its onnxruntime graph is ~30x slower per row) and a
StandardScaler + OneVsRest logistic-regression pipeline on river's Yeast (box [-1, 1] as the
zoo's yeast model), loads each with
`load(convert=False)` (onnxruntime only), attacks test inputs through a QueryModel within a
per-input query budget, and prints success as onnxruntime judges it, L2, queries per input and
wall time. Goals: >= 80% (forest) and >= 90% (logistic) at <= 20,000 queries per input.

    .venv/bin/python -m bench.estimated [--inputs 40] [--samples S] [--radius R] [--sweep]
                                        [--deepfool] [--multioutput]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from model_zoo import data
from onnxattack.attacks import Attack, AttackResult, MLCarliniWagner, MLDeepFool, Victim
from onnxattack.estimated import DEFAULT_RADIUS, DEFAULT_SAMPLES, QueryModel, positive_class_output
from onnxattack.loader import LoadedModel, load
from onnxattack.scores import criterion_for
from onnxattack.targets import make_targets, parse_target

BOX = (-1.0, 1.0)
BUDGET = 20_000
# ML-CW for a query budget: (1 + 2S) queries per row and iteration, so 4 x 100 iterations at
# S = 20 stay under 20,000; the larger learning rate makes up for the fewer iterations.
CW_SETTINGS = dict(max_iter=100, binary_steps=4, learning_rate=0.05, initial_const=1.0)


@dataclass
class Outcome:
    success: np.ndarray  # bool [n], onnxruntime's verdict on the original model
    l2: np.ndarray  # [n]
    queries: np.ndarray  # int [n] per input
    seconds: float


def _run_attack(attack: Attack, victim: Victim, x: torch.Tensor, target: torch.Tensor,
                model: LoadedModel) -> AttackResult:
    """The one place that calls an attack (its signature is the library's to change)."""
    criterion = criterion_for(attack.task, model.reader, 1)
    return attack(victim, x, target, criterion)


def train_models(folder: Path, trees: int = 50, multioutput: bool = False) -> dict[str, Path]:
    """Fit and export the models (seconds); return their ONNX paths."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    split = data.yeast()
    estimators = {
        "forest": OneVsRestClassifier(RandomForestClassifier(n_estimators=trees, random_state=0)),
        "logistic": make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=1000))),
    }
    if multioutput:
        estimators["forest-2d-y"] = RandomForestClassifier(n_estimators=trees, random_state=0)
    paths = {}
    for name, estimator in estimators.items():
        estimator.fit(split.x_train, split.y_train)
        exported = to_onnx(estimator, split.x_train[:1], options={"zipmap": False}, target_opset=17)
        path = folder / f"yeast-{name}.onnx"
        onnx.save(positive_class_output(exported), str(path))
        paths[name] = path
    return paths


def attack_inputs(model: LoadedModel, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` test inputs that have a label to hide, and their hide-single targets."""
    x = data.yeast().x_test
    clean = model.ort_scores(x)
    criterion = criterion_for(MLCarliniWagner.task, model.reader, 1)
    predicted = criterion.predict(clean)
    target = make_targets(parse_target("hide-single", model.labels), predicted, clean, seed)
    attacked = np.flatnonzero(~criterion.reached(clean, target))[:count]
    return x[attacked], target[attacked]


def attack_model(model: LoadedModel, attack: Attack, x: np.ndarray, target: np.ndarray, samples: int,
                 radius: float, budget: int = BUDGET, seed: int = 0) -> Outcome:
    query = QueryModel(model.ort_scores, BOX, samples=samples, radius=radius, seed=seed, budget=budget,
                       neutral=model.reader.attack_threshold)
    query.begin(len(x))
    victim = Victim(query, model.reader, BOX)
    start = time.perf_counter()
    result = _run_attack(attack, victim, torch.from_numpy(x), torch.from_numpy(target), model)
    seconds = time.perf_counter() - start
    x_adv = result.x_adv.numpy()
    criterion = criterion_for(attack.task, model.reader, 1)
    success = criterion.reached(model.ort_scores(x_adv), target)
    l2 = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    return Outcome(success, l2, query.spent.copy(), seconds)


def deepfool_model(model: LoadedModel, x: np.ndarray, target: np.ndarray, method: str, samples: int,
                   radius: float, budget: int = BUDGET, seed: int = 0) -> Outcome:
    """ML-DeepFool on the QueryModel's own Jacobian (the Victim.jacobian hook), one input at a time (a
    ledger row each)."""
    query = QueryModel(model.ort_scores, BOX, samples=samples, radius=radius, seed=seed, budget=budget,
                       neutral=model.reader.attack_threshold)

    def jacobian(x_: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return query.jacobian(x_, rows=rows, method=method)

    victim = Victim(query, model.reader, BOX, jacobian=jacobian)
    attack = MLDeepFool(max_iter=50)
    rows, spent = [], []
    start = time.perf_counter()
    for i in range(len(x)):
        query.begin([i])
        result = _run_attack(attack, victim, torch.from_numpy(x[i:i + 1]), torch.from_numpy(target[i:i + 1]), model)
        rows.append(result.x_adv.numpy())
        spent.append(int(query.spent[0]))
    seconds = time.perf_counter() - start
    x_adv = np.concatenate(rows)
    success = criterion_for(attack.task, model.reader, 1).reached(model.ort_scores(x_adv), target)
    l2 = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    return Outcome(success, l2, np.asarray(spent), seconds)


def line(name: str, outcome: Outcome) -> str:
    won = outcome.success
    l2 = float(outcome.l2[won].mean()) if won.any() else float("nan")
    return (f"{name:<34} success {won.mean():6.1%} ({int(won.sum())}/{len(won)})  L2 {l2:.3f}  "
            f"queries/input mean {outcome.queries.mean():8.0f} max {outcome.queries.max():6d}  "
            f"{outcome.seconds:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--radius", type=float, default=DEFAULT_RADIUS)
    parser.add_argument("--sweep", action="store_true", help="also try other (samples, radius) settings")
    parser.add_argument("--deepfool", action="store_true", help="also run ML-DeepFool (estimated Jacobian)")
    parser.add_argument("--multioutput", action="store_true", help="also a forest fit on the 2-D y (slow)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        paths = train_models(Path(folder), multioutput=args.multioutput)
        print(f"trained and exported both models in {time.perf_counter() - start:.1f} s")
        models = {name: load(path, device="cpu", scores="probabilities", box=BOX, convert=False,
                             probe=data.yeast().x_test[:4]) for name, path in paths.items()}

    settings = [(args.samples, args.radius)]
    if args.sweep:
        settings += [(s, r) for s in (10, 20, 40) for r in (0.005, 0.01, 0.02, 0.05) if (s, r) != settings[0]]
    print(f"ML-CW hide-single, {CW_SETTINGS}, budget {BUDGET} queries per input, box {BOX}")
    for name, model in models.items():
        x, target = attack_inputs(model, args.inputs)
        for samples, radius in settings:
            outcome = attack_model(model, MLCarliniWagner(**CW_SETTINGS), x, target, samples, radius)
            print(line(f"{name} S={samples} radius={radius}", outcome), flush=True)
        if args.deepfool:
            for method in ("coordinates", "random"):
                outcome = deepfool_model(model, x, target, method, args.samples, args.radius)
                print(line(f"{name} ML-DeepFool ({method})", outcome), flush=True)


if __name__ == "__main__":
    main()
