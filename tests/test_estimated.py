"""Estimated gradients: scikit-learn models exported by skl2onnx, scored by onnxruntime only.

Models are trained here on a small synthetic multi-label set (10 features in [0, 1], 5 labels);
success is judged by onnxruntime on the exported model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onnxattack.attacks import Attack, AttackResult, MLCarliniWagner, MLDeepFool, Victim
from onnxattack.estimated import QueryModel, positive_class_output
from onnxattack.runtime import session_options
from onnxattack.scores import ScoreReader, criterion_for
from onnxattack.types import ScoresKind

warnings.filterwarnings("ignore")

BOX = (0.0, 1.0)
READER = ScoreReader.create(ScoresKind.PROBABILITIES, None, None)  # probabilities, no head: threshold 0.5
FAST_CW = dict(max_iter=60, binary_steps=4, learning_rate=0.05)


class Counting:
    """Wraps a score function and counts the rows actually sent to it."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn = fn
        self.rows = 0
        self.calls = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.rows += len(x)
        self.calls += 1
        return self.fn(x)


def ort_scorer(model: onnx.ModelProto, output: str) -> Callable[[np.ndarray], np.ndarray]:
    options = session_options()
    options.intra_op_num_threads = 1  # the test machine's cores are shared
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run([output], {name: np.asarray(x, dtype=np.float32)})[0]


def _run_attack(attack: Attack, victim: Victim, x: torch.Tensor, target: torch.Tensor) -> AttackResult:
    """The one place that calls an attack (its signature is the library's to change)."""
    return attack(victim, x, target, criterion_for(attack.task, READER, 1))


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=500, n_features=10, n_classes=5, n_labels=2,
                                          random_state=0)
    return (x / x.max()).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def logistic(dataset):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = dataset
    pipeline = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=1000)))
    pipeline.fit(x[:400], y[:400])
    exported = to_onnx(pipeline, x[:1], options={"zipmap": False}, target_opset=17)
    return pipeline, ort_scorer(exported, "probabilities")


@pytest.fixture(scope="module")
def forest(dataset):
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.multiclass import OneVsRestClassifier

    x, y = dataset
    model = OneVsRestClassifier(RandomForestClassifier(n_estimators=30, random_state=0, n_jobs=1))
    model.fit(x[:400], y[:400])
    exported = to_onnx(model, x[:1], options={"zipmap": False}, target_opset=17)
    return model, ort_scorer(exported, "probabilities")


def true_gradients(pipeline, x: np.ndarray) -> np.ndarray:
    """d p_l / d x for StandardScaler + one logistic regression per label: p (1 - p) w_l / scale."""
    scaler, ovr = pipeline.steps[0][1], pipeline.steps[1][1]
    weights = np.stack([estimator.coef_[0] for estimator in ovr.estimators_])  # [L, d]
    p = pipeline.predict_proba(x)  # [N, L]
    return (p * (1 - p))[:, :, None] * weights[None] / scaler.scale_[None, None, :]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def hide_single(scores: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a positive label, and a target hiding one of them (the others kept)."""
    predicted = (scores > 0.5).astype(np.int8)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(predicted.any(axis=1))
    target = predicted[rows].copy()
    for i, row in enumerate(rows):
        target[i, rng.choice(np.flatnonzero(predicted[row]))] = 0
    return rows, target


def cw_on(score_fn, x: np.ndarray, count: int, **query) -> tuple[np.ndarray, QueryModel, np.ndarray]:
    """ML-CW hide-single on the first `count` attackable rows; (onnxruntime success, model, targets)."""
    rows, target = hide_single(score_fn(x))
    rows, target = rows[:count], target[:count]
    model = QueryModel(score_fn, BOX, **query)
    model.begin(len(rows))
    result = _run_attack(MLCarliniWagner(**FAST_CW), Victim(model, READER, BOX), torch.from_numpy(x[rows]),
                         torch.from_numpy(target))
    x_adv = result.x_adv.numpy()
    assert x_adv.min() >= BOX[0] and x_adv.max() <= BOX[1]
    success = ((score_fn(x_adv) > 0.5) == target.astype(bool)).all(axis=1)
    return success, model, x_adv


def test_estimated_gradient_agrees_with_the_true_gradient(dataset, logistic):
    pipeline, score_fn = logistic
    x = dataset[0][400:408]
    truth = true_gradients(pipeline, x)  # [N, L, d]
    v = np.random.default_rng(1).standard_normal((len(x), truth.shape[1]))
    expected = np.einsum("nl,nld->nd", v, truth)
    for distribution in ("gaussian", "rademacher"):
        model = QueryModel(score_fn, BOX, samples=400, radius=0.005, seed=3, distribution=distribution)
        xt = torch.from_numpy(x).requires_grad_(True)
        scores = model(xt)
        assert np.allclose(scores.detach().numpy(), pipeline.predict_proba(x), atol=1e-5)
        (scores * torch.from_numpy(v).float()).sum().backward()
        assert cosine(xt.grad.numpy(), expected).min() > 0.9, distribution
    # the Jacobian for ML-DeepFool: exact-ish by coordinates, noisy but aligned by random directions
    model = QueryModel(score_fn, BOX, samples=400, radius=0.005)
    for method, floor in (("coordinates", 0.99), ("random", 0.85)):
        _, jac = model.jacobian(torch.from_numpy(x), method=method)
        per_label = cosine(jac.numpy().reshape(-1, x.shape[1]), truth.reshape(-1, x.shape[1]))
        assert np.median(per_label) > floor, method


def test_query_count_is_exact_and_zero_gradient_rows_cost_nothing(dataset, logistic):
    _, score_fn = logistic
    x = torch.from_numpy(dataset[0][400:406]).requires_grad_(True)
    counter = Counting(score_fn)
    model = QueryModel(counter, BOX, samples=7)
    scores = model(x)
    assert counter.rows == model.queries == 6 * model.forward_cost and counter.calls == 1
    weights = torch.ones_like(scores)
    weights[[1, 4]] = 0  # these rows' grad_output is zero: no estimate needed
    (scores * weights).sum().backward()
    assert counter.calls == 2, "all rows' perturbations go in one call"
    assert counter.rows == model.queries == 6 + 4 * model.backward_cost
    assert model.spent.tolist() == [1 + 14, 1, 1 + 14, 1 + 14, 1, 1 + 14]
    assert x.grad[[1, 4]].abs().sum() == 0 and (x.grad[[0, 2, 3, 5]].abs().sum(dim=1) > 0).all()
    _, jac = model.jacobian(x.detach()[:2], rows=[2, 3], method="random")
    assert counter.rows == model.queries == 6 + 4 * 14 + 2 * model.jacobian_cost(10, "random")
    assert model.spent[2] == 1 + 14 + 1 + 14 and jac.shape == (2, 5, 10)


def test_directions_are_deterministic_and_independent_of_the_batch(dataset, logistic):
    _, score_fn = logistic
    x = torch.from_numpy(dataset[0][400:404])

    def grads(rows: list[int], seed: int) -> np.ndarray:
        model = QueryModel(score_fn, BOX, samples=5, seed=seed)
        model.begin(rows)  # the rows' keys: their global indices
        xt = x[[r - 10 for r in rows]].clone().requires_grad_(True)
        model(xt)[:, 0].sum().backward()
        return xt.grad.numpy()

    whole = grads([10, 11, 12, 13], seed=0)
    assert np.array_equal(whole, grads([10, 11, 12, 13], seed=0))
    assert np.allclose(whole[[3, 1]], grads([13, 11], seed=0), atol=1e-6)
    assert not np.allclose(whole, grads([10, 11, 12, 13], seed=1))


def test_budget_is_respected_and_spent_rows_stop(dataset, logistic):
    _, score_fn = logistic
    x = dataset[0][400:]
    counter = Counting(score_fn)
    budget = 500  # 60 x 4 iterations at 1 + 2 x 10 queries would be 5,040
    success, model, _ = cw_on(counter, x, 8, samples=10, budget=budget)
    # cw_on's own judging calls go through the counter too: one call on the clean rows, one on x_adv
    judged = len(x) + len(success)
    assert counter.rows - judged == model.queries == model.spent.sum()
    assert model.spent.max() <= budget
    step = 1 + 2 * 10
    assert model.exhausted.any()
    assert np.array_equal(model.exhausted, model.spent > budget - step)  # stopped with less than a step left


def test_ml_cw_succeeds_on_the_logistic_pipeline(dataset, logistic):
    _, score_fn = logistic
    success, model, _ = cw_on(score_fn, dataset[0][400:], 16, budget=20_000)
    assert success.mean() >= 0.9
    assert model.spent.max() <= 20_000


def test_ml_cw_succeeds_on_a_random_forest(dataset, forest):
    _, score_fn = forest
    success, model, _ = cw_on(score_fn, dataset[0][400:], 16, budget=20_000)
    assert success.mean() >= 0.75, success
    assert model.spent.max() <= 20_000


def _run_deepfool(attack: MLDeepFool, model: QueryModel, x: np.ndarray, target: np.ndarray,
                  method: str) -> np.ndarray:
    """ML-DeepFool on the QueryModel's own Jacobian, through the victim's Jacobian hook."""
    victim = Victim(model, READER, BOX, jacobian=lambda inputs, rows: model.jacobian(inputs, rows=rows, method=method))
    model.begin(len(x))
    result = _run_attack(attack, victim, torch.from_numpy(x), torch.from_numpy(target))
    return result.x_adv.numpy()


# Coordinates suit the smooth pipeline (exact slopes); on a forest over gridded features a step of
# sigma along one axis often crosses no split at all, so random directions are used there.
@pytest.mark.parametrize(("which", "method", "floor"), [("logistic", "coordinates", 0.9), ("forest", "random", 0.6)])
def test_ml_deepfool_with_the_estimated_jacobian(request, dataset, which, method, floor):
    _, score_fn = request.getfixturevalue(which)
    x = dataset[0][400:]
    rows, target = hide_single(score_fn(x))
    rows, target = rows[:12], target[:12]
    model = QueryModel(score_fn, BOX, budget=20_000)
    x_adv = _run_deepfool(MLDeepFool(max_iter=30), model, x[rows], target, method)
    success = ((score_fn(x_adv) > 0.5) == target.astype(bool)).all(axis=1)
    assert success.mean() >= floor, success
    assert model.queries <= 20_000 * len(rows)


def test_multi_label_forest_exports_become_one_label_scores_output(dataset):
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.multioutput import MultiOutputClassifier

    x, y = dataset
    forest = RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(x, y)
    per_label = MultiOutputClassifier(RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0)).fit(x, y)
    for estimator in (forest, per_label):
        exported = to_onnx(estimator, x[:1], options={"zipmap": False}, target_opset=17)
        fixed = positive_class_output(exported)
        assert fixed.graph.output[0].name == "label_scores"
        scores = ort_scorer(fixed, "label_scores")(x[:20])
        expected = np.stack([p[:, 1] for p in estimator.predict_proba(x[:20])], axis=1)
        assert scores.shape == (20, 5) and np.allclose(scores, expected, atol=1e-6)
