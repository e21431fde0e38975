"""Score outputs and inputs of every float dtype, in every method: torch and onnxruntime alike.

A Cast at the end of a graph (float16 / float64 scores) or at its start (float16 / float64 inputs)
once leaked its dtype into the attacks' float32 tensors (ml-deepfool, ml-pgd, mla-lp crashed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper
from onnxattack.cli.main import main

import onnxattack as oa
from onnxattack.attacks import METHODS
from onnxattack.batch import judge
from onnxattack.types import Task

from .exporters import MLP, export_torch

FEATURES, LABELS = 8, 4
FEW_STEPS = {"max_iter": 8, "binary_steps": 2}  # fast: the dtype path is tested, not the attacks
NUMPY = {TensorProto.FLOAT16: np.float16, TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}


def exported(folder: Path, head: str | None) -> Path:
    torch.manual_seed(0)
    return export_torch(MLP(FEATURES, LABELS, head=head), torch.zeros(2, FEATURES), folder / f"mlp-{head}.onnx",
                        dynamo=False, opset=17)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    """Ends with a Sigmoid: the attack tensor is cut before it, and before the Cast that follows."""
    return exported(tmp_path_factory.mktemp("dtypes"), "sigmoid")


@pytest.fixture(scope="module")
def logits_mlp(tmp_path_factory) -> Path:
    """Ends with a Linear: the torch graph itself ends with the Cast, in the cast dtype."""
    return exported(tmp_path_factory.mktemp("dtypes"), None)


def _rename(names, old: str, new: str) -> None:
    for index, name in enumerate(names):
        if name == old:
            names[index] = new


def cast_output(source: Path, elem: int, path: Path) -> Path:
    """The model with its score output cast to `elem` by a final Cast node."""
    model = onnx.load(str(source))
    output = model.graph.output[0]
    for node in model.graph.node:
        _rename(node.output, output.name, output.name + "_f32")
    model.graph.node.append(helper.make_node("Cast", [output.name + "_f32"], [output.name], to=elem))
    output.type.tensor_type.elem_type = elem
    onnx.save(model, str(path))
    return path


def cast_input(source: Path, elem: int, path: Path) -> Path:
    """The model taking its input as `elem`, cast to float32 by a first Cast node."""
    model = onnx.load(str(source))
    graph_input = model.graph.input[0]
    for node in model.graph.node:
        _rename(node.input, graph_input.name, graph_input.name + "_f32")
    model.graph.node.insert(0, helper.make_node("Cast", [graph_input.name], [graph_input.name + "_f32"],
                                                to=TensorProto.FLOAT))
    graph_input.type.tensor_type.elem_type = elem
    onnx.save(model, str(path))
    return path


def attack_for(method: str) -> oa.Attack:
    cls = METHODS[method]
    return cls(**{key: value for key, value in FEW_STEPS.items() if key in cls.default_values()})


def rows(dtype: type, count: int = 3) -> np.ndarray:
    return np.random.default_rng(1).uniform(0.2, 0.8, (count, FEATURES)).astype(dtype)


def fresh_verdict(model: oa.LoadedModel, attack: oa.Attack, scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Success on scores from a fresh onnxruntime session: restated by hand for thresholds and rankings."""
    if attack.task is Task.CLASSIFICATION:
        return ((scores > model.reader.threshold) == target.astype(bool)).all(axis=1)
    if attack.task is Task.RANKING:
        inside = np.where(target.astype(bool), scores, np.inf).min(axis=1)
        outside = np.where(target.astype(bool), -np.inf, scores).max(axis=1)
        return (inside > outside) & target.astype(bool).any(axis=1)
    return judge(model, attack, None, None).reached(scores, target)


def check_every_method(path: Path, x: np.ndarray) -> None:
    """Every method runs; the stored scores and verdict are onnxruntime's on x_adv, and torch agrees."""
    model = oa.load(path, box=(0, 1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for method in METHODS:
        if METHODS[method].discrete:  # token ids, not float inputs: tests/test_text_attack.py
            continue
        attack = attack_for(method)
        result = oa.attack_arrays(model, x, attack)
        assert result.x_adv.dtype == x.dtype, method
        assert ((result.x_adv >= 0) & (result.x_adv <= 1)).all(), method
        scores = session.run(None, {session.get_inputs()[0].name: result.x_adv})[0].astype(np.float32)
        assert np.allclose(scores, result.scores_adv, atol=1e-6), method
        expected = fresh_verdict(model, attack, scores, result.y_target) & result.attacked
        assert np.array_equal(expected, result.success), method
        assert result.torch_agrees.all(), method


@pytest.mark.parametrize("head", ["sigmoid", "logits"])
@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.DOUBLE], ids=["float16", "float64"])
def test_every_method_on_a_float16_or_float64_score_output(mlp, logits_mlp, tmp_path, elem, head):
    path = cast_output(mlp if head == "sigmoid" else logits_mlp, elem, tmp_path / "cast.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": rows(np.float32)})[0].dtype == NUMPY[elem]
    check_every_method(path, rows(np.float32))


@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.DOUBLE], ids=["float16", "float64"])
def test_every_method_on_float16_or_float64_inputs(mlp, tmp_path, elem):
    check_every_method(cast_input(mlp, elem, tmp_path / "cast.onnx"), rows(NUMPY[elem]))


@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.DOUBLE], ids=["float16", "float64"])
@pytest.mark.parametrize("method", ["ml-cw", "ml-pgd", "ml-deepfool"])
def test_attacks_succeed_in_that_dtype(mlp, tmp_path, elem, method):
    """Not only run: with enough steps the attacks reach their targets, on half-precision inputs too
    (computed in float32, handed back in float16)."""
    path = cast_output(cast_input(mlp, elem, tmp_path / "in.onnx"), elem, tmp_path / "both.onnx")
    model = oa.load(path, box=(0, 1))
    attack = METHODS[method](eps=1.0) if method == "ml-pgd" else METHODS[method]()
    result = oa.attack_arrays(model, rows(NUMPY[elem]), attack)
    assert result.attacked.any() and result.success[result.attacked].all(), method


def test_a_bfloat16_score_output_is_refused_in_one_line(mlp, tmp_path):
    """onnxruntime's Python API hands no bfloat16 arrays back, so nothing can judge such an output."""
    path = cast_output(mlp, TensorProto.BFLOAT16, tmp_path / "bf16.onnx")
    with pytest.raises(oa.UnsupportedModelError) as caught:
        oa.load(path, box=(0, 1))
    assert "\n" not in str(caught.value)


def test_a_bfloat16_input_is_refused_for_what_it_is(mlp, tmp_path):
    path = cast_input(mlp, TensorProto.BFLOAT16, tmp_path / "bf16.onnx")
    with pytest.raises(oa.UnsupportedModelError, match="is bfloat16: onnxruntime's Python API takes no bfloat16"):
        oa.load(path, box=(0, 1))


@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.DOUBLE], ids=["float16", "float64"])
def test_curve_on_a_float16_or_float64_score_output(logits_mlp, tmp_path, elem):
    path = cast_output(logits_mlp, elem, tmp_path / "cast.onnx")
    np.save(tmp_path / "x.npy", rows(np.float32))
    result = CliRunner().invoke(main, ["curve", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "c.h5"),
                                       "--method", "ml-pgd", "--eps", "0.05,0.5", "--max-iter", "5", "--json",
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rates = [point["success_rate"] for point in json.loads(result.output)["points"]]
    assert rates[-1] > 0
