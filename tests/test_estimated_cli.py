"""Models with no torch graph are attacked from the command line with estimated gradients:
skl2onnx random forest, gradient boosting and logistic-regression pipelines, and a graph with an op
that has no converter. Success is recomputed here from onnxruntime on the original file."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxattack.cli.main import main

from . import exporters as ex

warnings.filterwarnings("ignore")
FAST = ["--max-iter", "100", "--binary-steps", "4", "--learning-rate", "0.05", "--quiet", "--json"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=420, n_features=8, n_classes=4, n_labels=2, random_state=1)
    x = (x / x.max()).astype(np.float32)
    folder = tmp_path_factory.mktemp("estimated")
    np.save(folder / "x.npy", x[400:])
    return x[:400], y[:400].astype(np.int64), folder


def _export(estimator, x, path):
    from skl2onnx import to_onnx

    onnx.save(to_onnx(estimator, x[:1], options={"zipmap": False}, target_opset=17), str(path))
    return path


@pytest.fixture(scope="module")
def forest(data):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.multiclass import OneVsRestClassifier

    x, y, folder = data
    return _export(OneVsRestClassifier(RandomForestClassifier(20, random_state=0)).fit(x, y), x, folder / "rf.onnx")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def onnxruntime_success(path, model_path) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with h5py.File(path, "r") as handle:
        scores = session.run(["probabilities"], {session.get_inputs()[0].name: handle["x_adv"][:]})[0]
        reached = ((scores > 0.5) == handle["y_target"][:].astype(bool)).all(axis=1)
        attacked = handle["attacked"][:]
        assert np.array_equal(reached & attacked, handle["success"][:])
        return reached[attacked], handle["queries"][:][attacked]


def test_a_forest_is_attacked_without_any_flag(forest, data, tmp_path):
    _, _, folder = data
    out = tmp_path / "rf.h5"
    result = invoke("attack", forest, folder / "x.npy", "-o", out, "--max-queries", "20000", *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["gradients"] == "estimated"
    assert any("gradients are estimated" in note and "TreeEnsembleClassifier" in note for note in summary["notes"])
    assert summary["scores_kind"] == "probabilities"
    assert summary["torch_agreement"] is None  # no torch graph: nothing to agree with, never a fake 100%
    assert "agreement  n/a (no torch graph" in invoke("report", out).output.replace("   ", " ")
    success, queries = onnxruntime_success(out, forest)
    assert success.mean() >= 0.75
    assert (queries > 0).all() and queries.max() <= 20_000
    with h5py.File(out, "r") as handle:
        assert handle.attrs["gradients"] == "estimated"
        assert (handle["queries"][:][~handle["attacked"][:]] == 0).all()


def test_the_budget_is_respected_and_recorded(forest, data, tmp_path):
    _, _, folder = data
    out = tmp_path / "tight.h5"
    result = invoke("attack", forest, folder / "x.npy", "-o", out, "--max-queries", "500", *FAST)
    assert result.exit_code == 0, result.output
    _, queries = onnxruntime_success(out, forest)
    assert queries.max() <= 500 and queries.min() > 0


def test_a_logistic_pipeline_on_request_and_ml_deepfool_on_a_boosted_model(data, tmp_path):
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, folder = data
    logistic = _export(make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=500)))
                       .fit(x, y), x, tmp_path / "lr.onnx")
    result = invoke("attack", logistic, folder / "x.npy", "-o", tmp_path / "lr.h5", "--gradients", "estimate",
                    *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["gradients"] == "estimated"
    assert onnxruntime_success(tmp_path / "lr.h5", logistic)[0].mean() >= 0.9
    boosted = _export(OneVsRestClassifier(GradientBoostingClassifier(n_estimators=20, random_state=0)).fit(x, y),
                      x, tmp_path / "gb.onnx")
    result = invoke("attack", boosted, folder / "x.npy", "-o", tmp_path / "gb.h5", "--method", "ml-deepfool",
                    "--max-iter", "30", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert onnxruntime_success(tmp_path / "gb.h5", boosted)[0].mean() >= 0.6


def test_gradients_torch_refuses_a_forest_naming_the_op(forest, data, tmp_path):
    _, _, folder = data
    result = CliRunner().invoke(main, ["attack", str(forest), str(folder / "x.npy"), "-o", str(tmp_path / "o.h5"),
                                       "--gradients", "torch", "--quiet"])
    assert result.exit_code == 3 and "TreeEnsembleClassifier" in result.output


def test_a_graph_with_an_op_without_converter_is_still_attacked(tmp_path):
    path = ex.unconvertible_model(tmp_path / "hardmax.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 1, (6, 3)).astype(np.float32))
    result = invoke("attack", path, tmp_path / "x.npy", "-o", tmp_path / "h.h5", "--target", "random", *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["gradients"] == "estimated" and summary["rows"] == 6
