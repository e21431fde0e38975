"""Black-box methods: ml-square (scores only) and ml-hsj (labels only). Success is recomputed from
onnxruntime on the stored x_adv, budgets are checked in float64 from the stored inputs, and query
counts are checked against the rows a counting wrapper saw onnxruntime receive."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main

from onnxattack import load
from onnxattack.attacks import MLSquare
from onnxattack.batch import batch_targets, judge, target_spec

warnings.filterwarnings("ignore")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def stored(path):
    with h5py.File(path, "r") as handle:
        return {name: handle[name][:] for name in ("x", "x_adv", "y_target", "attacked", "success", "queries",
                                                   "l2", "iterations")}


def ort_reached(model_path, output, x_adv, target, threshold=0.5):
    """onnxruntime's own verdict on the stored x_adv: every label of `output` on its target side."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    scores = session.run([output], {session.get_inputs()[0].name: x_adv})[0]
    if scores.ndim == 1:  # class indices
        classes = np.arange(target.shape[1])
        scores = (scores[:, None] == classes[None]).astype(np.float32)
    return ((scores.astype(np.float64) > threshold) == target.astype(bool)).all(axis=1)


class CountingScorer:
    """Wraps the onnxruntime scorer: every call's rows are recorded (the real scorer answers)."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.calls: list[np.ndarray] = []

    def __call__(self, x):
        self.calls.append(np.array(x, copy=True))
        return self.scorer(x)

    def __getattr__(self, name):
        return getattr(self.scorer, name)


@pytest.fixture(scope="module")
def yeast_forest(zoo_model, zoo_inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("yeast")
    np.save(folder / "x.npy", zoo_inputs("yeast-forest", 8))
    return zoo_model("yeast-forest"), folder / "x.npy"


@pytest.mark.parametrize("norm, eps", [("inf", 0.05), ("2", 0.5)])
def test_square_counts_every_query_stops_at_success_and_sends_one_call_per_step(yeast_forest, norm, eps):
    path, inputs = yeast_forest
    model = load(path, box=(-1.0, 1.0), queries_only=True, max_queries=1000)
    assert model.gradients == "none" and model.graph is None  # never the torch graph, even where one exists
    x = np.load(inputs)
    attack = MLSquare(eps=eps, norm=norm)
    spec = target_spec("hide-single", model, attack)
    criterion = judge(model, attack, spec, None)
    _, _, goal, attacked = batch_targets(model, x, "hide-single", spec, criterion, 0, 0)
    x, goal = x[attacked], goal[attacked]
    counter = CountingScorer(model.scorer)
    model.scorer = counter
    victim = model.victim()
    victim.begin(np.arange(len(x)))
    torch.manual_seed(0)
    result = attack(victim, torch.from_numpy(x), torch.from_numpy(goal), criterion)
    spent = model.queries_spent()
    sizes = [len(call) for call in counter.calls]
    # every row the scorer received is in the ledger, the attack's count and the result
    assert sum(sizes) == spent.sum() == result.model_calls.sum().item()
    assert spent.max() <= 1000 and (spent == result.iterations.numpy() + 1).all()
    # one onnxruntime call per step: call k holds exactly the rows that had not stopped before it, in order
    assert sizes == [int((spent > k).sum()) for k in range(int(spent.max()))]
    x_adv = result.x_adv.numpy()
    reached = ort_reached(path, "probabilities", x_adv, goal)
    assert np.array_equal(reached, result.success.numpy()) and reached.mean() >= 0.5
    for row in np.flatnonzero(reached):  # a row's last query is its success: it stops there
        last = counter.calls[spent[row] - 1]
        position = int((np.flatnonzero(spent > spent[row] - 1) == row).nonzero()[0][0])
        assert np.array_equal(last[position], x_adv[row])
    delta = x_adv.astype(np.float64) - x.astype(np.float64)
    norms = np.abs(delta).max(axis=1) if norm == "inf" else np.linalg.norm(delta, axis=1)
    assert norms.max() <= eps and x_adv.min() >= -1 and x_adv.max() <= 1


def test_square_beats_the_nes_route_on_a_forest_at_a_fraction_of_its_queries(yeast_forest, tmp_path):
    path, inputs = yeast_forest
    common = ["--target", "hide-single", "--eps", "0.1", "--max-queries", "5000", "--range", "-1", "1",
              "--quiet", "--json"]
    square = invoke("attack", path, inputs, "-o", tmp_path / "square.h5", "--method", "ml-square", *common)
    nes = invoke("attack", path, inputs, "-o", tmp_path / "nes.h5", "--method", "ml-pgd", "--gradients", "estimate",
                 *common)
    assert square.exit_code == 0 and nes.exit_code == 0, square.output + nes.output
    summary = json.loads(square.output)
    assert summary["gradients"] == "none" and summary["queries_median_success"] is not None
    rates, per_success = {}, {}
    for name in ("square", "nes"):
        rows = stored(tmp_path / f"{name}.h5")
        attacked = rows["attacked"]
        reached = ort_reached(path, "probabilities", rows["x_adv"], rows["y_target"]) & attacked
        assert np.array_equal(reached, rows["success"])
        assert np.abs(rows["x_adv"].astype(np.float64) - rows["x"].astype(np.float64)).max() <= 0.1
        assert rows["queries"][attacked].min() > 0 and rows["queries"].max() <= 5000
        rates[name] = reached[attacked].mean()
        per_success[name] = rows["queries"][reached].mean()
    assert rates["square"] >= rates["nes"] and rates["square"] >= 0.75
    assert per_success["square"] <= 0.2 * per_success["nes"]
    assert summary["queries_mean_success"] == pytest.approx(per_success["square"])


def _label_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The skl2onnx export with only its `label` output kept (the probabilities are dropped)."""
    keep = [output for output in model.graph.output if output.name == "label"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return model


@pytest.fixture(scope="module")
def label_models(tmp_path_factory):
    """A multi-label forest ([N, 4] 0/1 labels) and a single-label MLP on digits ([N] class indices),
    both exported by skl2onnx with their label output only; and the forest with both outputs."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits, make_multilabel_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier

    folder = tmp_path_factory.mktemp("labels")
    x, y = make_multilabel_classification(n_samples=420, n_features=8, n_classes=4, n_labels=2, random_state=1)
    x = (x / x.max()).astype(np.float32)
    forest = to_onnx(OneVsRestClassifier(RandomForestClassifier(20, random_state=0)).fit(x[:400], y[:400]), x[:1],
                     options={"zipmap": False}, target_opset=17)
    onnx.save(forest, str(folder / "forest-both.onnx"))
    onnx.save(_label_only(forest), str(folder / "forest.onnx"))
    np.save(folder / "forest-x.npy", x[400:])
    digits = load_digits()
    features = (digits.data / 16).astype(np.float32)
    mlp = MLPClassifier((32,), max_iter=200, random_state=0).fit(features[:1500], digits.target[:1500])
    onnx.save(_label_only(to_onnx(mlp, features[:1], options={"zipmap": False}, target_opset=17)),
              str(folder / "mlp.onnx"))
    np.save(folder / "mlp-x.npy", features[1500:1512])
    return folder


@pytest.mark.parametrize("model, target", [("forest", "hide-single"), ("mlp", "random")])
def test_hsj_attacks_a_label_only_pipeline_from_the_cli(label_models, model, target, tmp_path):
    path, inputs, out = label_models / f"{model}.onnx", label_models / f"{model}-x.npy", tmp_path / "hsj.h5"
    result = invoke("attack", path, inputs, "-o", out, "--method", "ml-hsj", "--target", target,
                    "--max-queries", "3000", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["scores_kind"] == "labels" and summary["gradients"] == "none"
    rows = stored(out)
    attacked = rows["attacked"]
    reached = ort_reached(path, "label", rows["x_adv"], rows["y_target"]) & attacked
    assert np.array_equal(reached, rows["success"]) and reached[attacked].mean() >= 0.8
    assert rows["queries"][attacked].min() > 0 and rows["queries"].max() <= 3000
    l2 = np.linalg.norm(rows["x_adv"].astype(np.float64) - rows["x"].astype(np.float64), axis=1)
    assert summary["l2_mean"] == pytest.approx(l2[reached].mean(), rel=1e-5) and 0 < summary["l2_mean"] < 2


def test_gradient_methods_refuse_a_label_output_and_inspect_says_so(label_models, tmp_path):
    path, inputs = label_models / "forest.onnx", label_models / "forest-x.npy"
    result = CliRunner().invoke(main, ["attack", str(path), str(inputs), "-o", str(tmp_path / "o.h5"), "--quiet"])
    assert result.exit_code == 3 and "labels only" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    shown = CliRunner().invoke(main, ["inspect", str(path)])
    assert shown.exit_code == 0 and "label output only: --method ml-hsj" in shown.output
    both = label_models / "forest-both.onnx"  # --output names the label output of a model that has scores
    named = CliRunner().invoke(main, ["attack", str(both), str(inputs), "-o", str(tmp_path / "p.h5"), "--quiet",
                                      "--output", "label", "--method", "ml-pgd"])
    assert named.exit_code == 3 and "labels only" in named.output
    hsj = invoke("attack", both, inputs, "-o", tmp_path / "q.h5", "--output", "label", "--method", "ml-hsj",
                 "--max-queries", "500", "--quiet", "--json")
    assert hsj.exit_code == 0 and json.loads(hsj.output)["scores_kind"] == "labels"


def test_gradients_auto_runs_a_budgeted_method_as_ml_square_where_no_graph_converts(label_models, tmp_path):
    path, inputs = label_models / "forest-both.onnx", label_models / "forest-x.npy"  # its probabilities
    result = invoke("attack", path, inputs, "-o", tmp_path / "auto.h5", "--method", "ml-pgd", "--eps", "0.3",
                    "--max-queries", "2000", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["method"] == "ml-square" and summary["gradients"] == "none"
    chosen = [note for note in summary["notes"] if "runs as ml-square" in note]
    assert len(chosen) == 1 and "TreeEnsembleClassifier" in chosen[0] and "eps 0.3" in chosen[0]
    assert not any(note.startswith("gradients are estimated") for note in summary["notes"])
    rows = stored(tmp_path / "auto.h5")
    assert np.abs(rows["x_adv"].astype(np.float64) - rows["x"].astype(np.float64)).max() <= 0.3
    assert rows["queries"][rows["attacked"]].min() > 0
    kept = invoke("attack", path, inputs, "-o", tmp_path / "nes.h5", "--method", "ml-pgd", "--eps", "0.3",
                  "--gradients", "estimate", "--max-iter", "5", "--quiet", "--json")
    assert json.loads(kept.output)["method"] == "ml-pgd" and json.loads(kept.output)["gradients"] == "estimated"


def test_black_boxes_send_each_candidate_with_its_own_rows_of_the_other_inputs(tmp_path):
    """A two-input model: candidates of many rows (ml-hsj names a row many times in one call) go to
    onnxruntime with their own row of the pass-through input; the verdict is recomputed here."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxattack import attack_arrays
    from onnxattack.attacks import MLHopSkipJump

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in (("W", (6, 3)), ("V", (2, 3)))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("MatMul", ["extra", "V"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["z"]), helper.make_node("Sigmoid", ["z"], ["p"])], "two-inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
         helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])], weights)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_proto.ir_version = 8
    onnx.save(model_proto, str(tmp_path / "two.onnx"))
    x, extra = rng.uniform(0, 1, (6, 6)).astype(np.float32), rng.uniform(0, 1, (6, 2)).astype(np.float32)
    model = load(tmp_path / "two.onnx", attack_input="x", queries_only=True, max_queries=500, probe=x[:4],
                 probe_others={"extra": extra[:4]})
    session = ort.InferenceSession(str(tmp_path / "two.onnx"), providers=["CPUExecutionProvider"])
    for attack in (MLSquare(eps=0.3), MLHopSkipJump()):
        result = attack_arrays(model, x, attack, "hide-single", other_inputs={"extra": extra})
        scores = session.run(["p"], {"x": result.x_adv, "extra": extra})[0]
        reached = ((scores > 0.5) == result.y_target.astype(bool)).all(axis=1) & result.attacked
        assert np.array_equal(reached, result.success) and reached.sum() >= 3
        assert (result.queries[result.attacked] > 0).all() and result.queries.max() <= 500


def test_square_stays_a_black_box_on_a_model_that_converts(tmp_path):
    """A torch-exported MLP converts (load gives a torch graph), yet ml-square queries onnxruntime only
    and records its queries; the verdict is recomputed from onnxruntime."""
    from . import exporters as ex

    torch.manual_seed(0)
    path = ex.export_torch(ex.MLP(head="sigmoid"), torch.rand(2, 12), tmp_path / "mlp.onnx", dynamo=False, opset=17)
    assert load(path).gradients == "torch"
    np.save(tmp_path / "x.npy", np.random.default_rng(1).uniform(0, 1, (12, 12)).astype(np.float32))
    result = invoke("attack", path, tmp_path / "x.npy", "-o", tmp_path / "o.h5", "--method", "ml-square",
                    "--eps", "0.3", "--max-queries", "400", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["gradients"] == "none" and summary["torch_agreement"] is None
    rows = stored(tmp_path / "o.h5")
    attacked = rows["attacked"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    assert np.array_equal(ort_reached(path, output, rows["x_adv"], rows["y_target"]) & attacked, rows["success"])
    assert rows["success"].sum() >= attacked.sum() // 2
    assert (rows["queries"][attacked] == rows["iterations"][attacked] + 1).all() and rows["queries"].max() <= 400
