"""ai.onnx.ml linear ops against onnxruntime: one-node graphs and real skl2onnx exports."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxattack.bridge.normalise import prune_to

from .converter_checks import check, model_of

FEATURES = 4


def _ml_node(op: str, outputs: list[str], **attributes):
    return helper.make_node(op, ["x"], outputs, domain="ai.onnx.ml", **attributes)


def _x(rows: int = 6, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, FEATURES)) * scale).astype(np.float32)


def _coefficients(rows: int, seed: int = 3) -> list[float]:
    return np.random.default_rng(seed).normal(size=rows * FEATURES).round(3).tolist()


CASES = [
    ("scaler-per-feature", _ml_node("Scaler", ["y"], offset=[0.5, -1.0, 2.0, 0.0], scale=[2.0, 0.5, 1.5, -1.0])),
    ("scaler-broadcast", _ml_node("Scaler", ["y"], offset=[0.25], scale=[3.0])),
    ("normalizer-l2", _ml_node("Normalizer", ["y"], norm="L2")),
    ("normalizer-l1", _ml_node("Normalizer", ["y"], norm="L1")),
    ("regressor-3-targets", _ml_node("LinearRegressor", ["y"], coefficients=_coefficients(3),
                                     intercepts=[0.1, -0.2, 0.3], targets=3)),
    ("regressor-1-target", _ml_node("LinearRegressor", ["y"], coefficients=_coefficients(1), intercepts=[0.5])),
]
for _transform in ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"):
    CASES.append((f"classifier-3-classes-{_transform.lower()}", _ml_node(
        "LinearClassifier", ["label", "scores"], coefficients=_coefficients(3), intercepts=[0.1, -0.2, 0.0],
        classlabels_ints=[4, 5, 6], post_transform=_transform, multi_class=1)))
    CASES.append((f"classifier-binary-{_transform.lower()}", _ml_node(
        "LinearClassifier", ["label", "scores"], coefficients=_coefficients(1), intercepts=[0.2],
        classlabels_ints=[0, 1], post_transform=_transform)))


@pytest.mark.parametrize("name,node", CASES, ids=[c[0] for c in CASES])
def test_ml_op_matches_onnxruntime(name, node):
    outputs = list(node.output)
    model = model_of([node], [("x", TensorProto.FLOAT, [None, FEATURES])], outputs, opset=17, ml_opset=1,
                     output_types={"label": TensorProto.INT64})
    x = _x()
    check(model, {"x": x}, family="ml", atol=1e-5, rtol=1e-5, grad_tolerance=1e-2, eps=1e-2)
    if "softmax_zero" in name:  # a zero score (zero row, zero intercept) leaves the sum: forward only
        x[0] = 0.0
        check(model, {"x": x}, family="ml", atol=1e-5, rtol=1e-5, grad=())


def test_normalizer_max_matches_onnxruntime():
    model = model_of([_ml_node("Normalizer", ["y"], norm="MAX")], [("x", TensorProto.FLOAT, [None, FEATURES])],
                     ["y"], ml_opset=1)
    x = np.abs(_x()) + 0.5  # a positive row max: the norm is a smooth function there
    check(model, {"x": x}, family="ml", eps=1e-3)


def _score_graph(model, output: str):
    return prune_to(model, output, output)


def test_skl2onnx_multilabel_one_vs_rest_pipeline(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 6)) * [1, 2, 3, 0.5, 1, 4] + 2).astype(np.float32)
    y = np.stack([x[:, 0] > 2, x[:, 1] + x[:, 2] > 4, x[:, 3] < 2.2], axis=1).astype(int)
    pipe = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression())).fit(x, y)
    model = to_onnx(pipe, x[:1], options={id(pipe): {"zipmap": False}})
    assert {"Scaler", "LinearClassifier"} <= {n.op_type for n in model.graph.node}
    score_graph = _score_graph(model, "probabilities")
    probe = x[:16]
    check(score_graph, {"X": probe}, family="ml-skl2onnx", grad=("X",), atol=1e-5, rtol=1e-4, eps=1e-2)
    assert np.allclose(check_probabilities(score_graph, probe), pipe.predict_proba(probe), atol=1e-5)


def check_probabilities(model, x: np.ndarray) -> np.ndarray:
    import torch

    from onnxattack.bridge.convert import to_torch

    return to_torch(model)(torch.from_numpy(x)).detach().numpy()


def test_skl2onnx_normalizer_and_multi_output_ridge():
    from skl2onnx import to_onnx
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 5)).astype(np.float32)
    pipe = make_pipeline(Normalizer(norm="l2"), Ridge()).fit(x, rng.normal(size=(100, 3)))
    model = to_onnx(pipe, x[:1])
    assert {"Normalizer", "LinearRegressor"} <= {n.op_type for n in model.graph.node}
    output = model.graph.output[0].name
    check(_score_graph(model, output), {"X": x[:10]}, family="ml-skl2onnx", grad=("X",), atol=1e-5, rtol=1e-4,
          eps=1e-3)
    assert np.allclose(check_probabilities(model, x[:10]), pipe.predict(x[:10]), atol=1e-4)
