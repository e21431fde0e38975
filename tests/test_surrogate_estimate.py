"""When the torch graph is close but not exact, or the estimate sees nothing: a torch graph that misses
the fidelity tolerance is attacked through as a surrogate (kept only if its successes hold in
onnxruntime), saturated softmax outputs are estimated on their logits, and rows whose queries never
change the scores stop early with a reason. Success is recomputed here from onnxruntime."""

from __future__ import annotations

import json
from dataclasses import fields

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main
from torch import nn

from onnxattack.batch import BatchResult
from onnxattack.pipeline import judge_surrogate

from . import exporters as ex


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def recomputed_success(out, model_path) -> np.ndarray:
    """Success of the attacked rows, from onnxruntime on the stored x_adv (must equal the stored verdict)."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        scores = session.run(None, {session.get_inputs()[0].name: handle["x_adv"][:]})[0]
        reached = ((scores > 0.5) == handle["y_target"][:].astype(bool)).all(axis=1)
        attacked = handle["attacked"][:]
        assert np.array_equal(reached & attacked, handle["success"][:])
        return reached[attacked]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return x, data.target


@pytest.fixture(scope="module")
def saturated(digits, tmp_path_factory):
    """A 2-class softmax (digit 0 against 1) scaled until its probabilities are exactly 0 and 1 in float32."""
    x, y = digits
    keep = y < 2
    x, y = x[keep], y[keep]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 2))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimiser.step()
    with torch.no_grad():
        net[2].weight *= 40
        net[2].bias *= 40
    folder = tmp_path_factory.mktemp("saturated")
    path = ex.export_torch(nn.Sequential(net, nn.Softmax(dim=1)), torch.from_numpy(x[:2]), folder / "sat.onnx",
                           dynamo=False, opset=17)
    # Sinh(Asinh(z)) = z, but neither op has a converter: the model has no torch graph (as the keras2onnx
    # face model of the issue had none), so --gradients auto estimates
    model = onnx.load(str(path))
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax")
    logits = softmax.input[0]
    model.graph.node.insert(list(model.graph.node).index(softmax), onnx.helper.make_node("Asinh", [logits], ["a"]))
    model.graph.node.insert(list(model.graph.node).index(softmax), onnx.helper.make_node("Sinh", ["a"], ["b"]))
    softmax.input[0] = "b"
    onnx.save(model, str(path))
    np.save(folder / "x.npy", x[-12:])
    return path, folder / "x.npy"


def test_a_saturated_softmax_is_attacked_through_estimated_logits(saturated, tmp_path):
    path, inputs = saturated
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"input": np.load(inputs)})[0]
    assert (probabilities.max(axis=1) == 1.0).mean() >= 0.75  # saturated: no signal left in the output
    out = tmp_path / "sat.h5"
    result = invoke("attack", path, inputs, "-o", out, "--target", "random", "--quiet", "--json")  # defaults
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["gradients"] == "estimated"
    assert any("of the logits before the final softmax" in note and "no converter for Asinh" in note
               for note in summary["notes"])
    assert recomputed_success(out, path).mean() >= 0.8


@pytest.fixture(scope="module")
def sigmoid_mlp(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("surrogate")
    path = ex.export_torch(ex.MLP(features=12, labels=5, head="sigmoid"), torch.rand(2, 12), folder / "mlp.onnx",
                           dynamo=False, opset=17)
    np.save(folder / "x.npy", np.random.default_rng(0).uniform(0, 1, (8, 12)).astype(np.float32))
    return path, folder / "x.npy"


def test_a_graph_that_misses_the_tolerance_is_kept_as_a_surrogate_when_its_successes_hold(sigmoid_mlp, tmp_path):
    path, inputs = sigmoid_mlp
    out = tmp_path / "s.h5"
    # float32 rounding alone exceeds a tolerance of 1e-12: the graph converts but is not "faithful"
    result = invoke("attack", path, inputs, "-o", out, "--tolerance", "1e-12", "--method", "ml-deepfool",
                    "--quiet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["gradients"] == "torch"
    notes = " ".join(summary["notes"])
    assert "attacked through it as a surrogate" in notes and "kept" in notes
    assert recomputed_success(out, path).mean() >= 0.8
    strict = invoke("attack", path, inputs, "-o", tmp_path / "t.h5", "--tolerance", "1e-12", "--gradients", "torch")
    assert strict.exit_code == 3 and "tolerance" in strict.output  # --gradients torch still refuses it


def test_an_int8_qdq_model_that_misses_the_tolerance_is_attacked_through_its_surrogate(sigmoid_mlp, tmp_path):
    """A static-quantiser QDQ model whose torch graph misses a strict tolerance: default settings, the
    surrogate kept, success judged by onnxruntime (with the exact-QDQ session the verdict uses)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    path, inputs = sigmoid_mlp
    rng = np.random.default_rng(0)
    calibration = iter([{"input": rng.random((1, 12), dtype=np.float32)} for _ in range(16)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(calibration, None)

    qdq = tmp_path / "qdq.onnx"
    # the linear layers int8, Tanh and Sigmoid left in float: where torch and onnxruntime round differently
    quantize_static(str(path), str(qdq), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Gemm"],
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out = tmp_path / "q.h5"
    result = invoke("attack", qdq, inputs, "-o", out, "--tolerance", "1e-9", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["gradients"] == "torch" and any("surrogate check" in note for note in summary["notes"])
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(qdq), exact, providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        scores = session.run(None, {"input": handle["x_adv"][:]})[0]
        reached = ((scores > 0.5) == handle["y_target"][:].astype(bool)).all(axis=1)
        attacked = handle["attacked"][:]
        assert np.array_equal(reached & attacked, handle["success"][:])
    assert reached[attacked].mean() >= 0.8


def _batch(success, agrees, attacked) -> BatchResult:
    n = len(success)
    zeros = {f.name: np.zeros(n) for f in fields(BatchResult) if f.name != "other_inputs"}
    zeros.update(success=np.array(success), torch_agrees=np.array(agrees), attacked=np.array(attacked))
    return BatchResult(**zeros)


def test_the_surrogate_is_judged_by_how_many_of_its_successes_hold():
    # rows 0-2: torch and onnxruntime both reached; row 3: torch reached, onnxruntime did not
    keep, note = judge_surrogate(_batch([1, 1, 1, 0, 0], [1, 1, 1, 0, 1], [1, 1, 1, 1, 0]))
    assert keep and "3 of the 4 rows" in note and "kept" in note
    keep, note = judge_surrogate(_batch([0, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]))
    assert not keep and "1 of the 3 rows" in note and "dropped" in note
    keep, _ = judge_surrogate(_batch([0, 0], [1, 1], [1, 1]))  # it reached nothing: nothing to trust
    assert not keep


def test_rows_whose_queries_never_change_the_scores_stop_early_with_a_reason(tmp_path):
    # Binarizer (threshold 0.5) + Hardmax: constant over the whole box [1, 100], so no radius finds a change
    path = ex.unconvertible_model(tmp_path / "step.onnx")
    np.save(tmp_path / "x.npy", np.full((3, 3), 50.0, dtype=np.float32) + np.arange(3, dtype=np.float32))
    out = tmp_path / "flat.h5"
    result = invoke("attack", path, tmp_path / "x.npy", "-o", out, "--range", "1", "100", "--target", "random",
                    "--max-queries", "2000", "--quiet")
    assert result.exit_code == 0, result.output
    assert "stopped early" in result.output and "flat scores" in result.output
    with h5py.File(out, "r") as handle:
        attacked = handle["attacked"][:]
        assert attacked.any()
        assert (handle["stall_reason"][:][attacked] == 1).all()
        # stopped once a quarter of the budget bought nothing, long before the budget ran out
        assert (handle["queries"][:][attacked] <= 0.25 * 2000 + 41).all()
        assert json.loads(handle.attrs["stall_reasons"])["1"].startswith("flat scores")
