"""If (branches as subgraphs), Clip with bounds computed in the graph, and the rewrites around them
(pruning through subgraphs, explicit Squeeze axes), against onnxruntime: outputs and input gradients."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from onnxattack.bridge.convert import blocking_ops, to_torch
from onnxattack.bridge.normalise import explicit_squeeze_axes, prune_to
from onnxattack.model import detect_scores_kind
from onnxattack.types import ScoresKind

from .converter_checks import check, const, model_of, session


def _branch(nodes, outputs) -> onnx.GraphProto:
    return helper.make_graph(nodes, "branch", [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                                                   for name in outputs])


def _gated_model(opset: int, condition: str = "scalar") -> onnx.ModelProto:
    """y = sigmoid(x @ W) when max(x) > 0 (W only read inside the branch), else -x; p = x * 2 either way."""
    then_branch = _branch([helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Sigmoid", ["xw"], ["t"]),
                           helper.make_node("Mul", ["x", "two"], ["tp"])], ["t", "tp"])
    else_branch = _branch([helper.make_node("Identity", ["negated"], ["e"]),
                           helper.make_node("Add", ["x", "x"], ["ep"])], ["e", "ep"])
    if condition == "scalar":
        gate = [helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
                helper.make_node("Greater", ["peak", "zero"], ["cond"])]
    else:  # a condition with one element per row: onnxruntime refuses more than one
        gate = [helper.make_node("ReduceMax", ["x"], ["peak"], axes=[1], keepdims=0),
                helper.make_node("Greater", ["peak", "zero"], ["cond"])]
    nodes = [helper.make_node("Neg", ["x"], ["negated"]), *gate,
             helper.make_node("If", ["cond"], ["y", "p"], then_branch=then_branch, else_branch=else_branch)]
    rng = np.random.default_rng(0)
    return model_of(nodes, [("x", TensorProto.FLOAT, [1, 4])], ["y", "p"],
                    [const("W", rng.normal(size=(4, 4))), const("zero", 0.0), const("two", 2.0)], opset=opset)


@pytest.mark.parametrize("opset", [11, 13, 16])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
def test_if_takes_the_branch_onnxruntime_takes(opset, sign):
    x = (sign * np.array([[0.3, 1.2, 0.7, 2.0]])).astype(np.float32)
    check(_gated_model(opset), {"x": x}, family="control", eps=1e-3, grad_tolerance=1e-2)


def test_if_with_nested_if_and_branches_reading_outer_values():
    inner_then = _branch([helper.make_node("Mul", ["x", "x"], ["sq"])], ["sq"])
    inner_else = _branch([helper.make_node("Identity", ["c"], ["ci"])], ["ci"])  # an outermost initializer
    outer_then = _branch([helper.make_node("If", ["inner_cond"], ["inner"], then_branch=inner_then,
                                           else_branch=inner_else),
                          helper.make_node("Add", ["inner", "shift"], ["o"])], ["o"])
    outer_else = _branch([helper.make_node("Identity", ["x"], ["xi"])], ["xi"])  # the graph input
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("ReduceMin", ["x"], ["low"], keepdims=0),
             helper.make_node("Greater", ["low", "zero"], ["inner_cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=outer_then, else_branch=outer_else)]
    inits = [const("zero", 0.0), const("shift", 0.5), const("c", [[1.0, 2.0, 3.0]])]
    model = model_of(nodes, [("x", TensorProto.FLOAT, [1, 3])], ["y"], inits, opset=13)
    for x in ([[0.5, 1.0, 2.0]], [[-0.5, 1.0, 2.0]], [[-1.0, -2.0, 0.5]]):
        array = np.asarray(x, dtype=np.float32)
        grad = ("x",) if float(array.min()) > 0 or float(array.sum()) <= 0 else ()  # else: a constant branch
        check(model, {"x": array}, family="control", grad=grad, eps=1e-3)


def test_if_refuses_a_condition_of_several_elements_as_onnxruntime_does():
    model = _gated_model(13, condition="per-row")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    x = np.array([[0.3, 1.2, 0.7, 2.0], [-1.0, -2.0, -0.5, -0.1]], dtype=np.float32)
    with pytest.raises(Exception):  # noqa: B017 (onnxruntime's own exception type)
        session(model).run(None, {"x": x})
    with pytest.raises(ValueError, match="one element"):
        to_torch(model)(torch.from_numpy(x))


def test_pruning_keeps_what_branches_read_and_blocking_ops_look_inside():
    model = _gated_model(13)
    pruned = prune_to(model, "y", "y")
    assert {init.name for init in pruned.graph.initializer} == {"W", "zero", "two"}
    assert [o.name for o in pruned.graph.output] == ["y"]
    x = np.array([[0.3, 1.2, 0.7, 2.0]], dtype=np.float32)
    expected = session(model).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(to_torch(pruned)(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
    branch = _branch([helper.make_node("Hardmax", ["x"], ["h"])], ["h"])
    blocked = model_of([helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
                        helper.make_node("Greater", ["peak", "zero"], ["cond"]),
                        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
                       [("x", TensorProto.FLOAT, [1, 4])], ["y"], [const("zero", 0.0)], opset=13)
    assert blocking_ops(blocked) == ["Hardmax-13"]


def test_scores_read_through_an_if_whose_branches_end_with_sigmoid():
    model = _gated_model(13)
    assert detect_scores_kind(model, "y") == ScoresKind.LOGITS  # the else branch is -x: no common activation
    sigmoid_else = _branch([helper.make_node("Sigmoid", ["negated"], ["e"]),
                            helper.make_node("Add", ["x", "x"], ["ep"])], ["e", "ep"])
    for attribute in model.graph.node[-1].attribute:
        if attribute.name == "else_branch":
            attribute.g.CopyFrom(sigmoid_else)
    assert detect_scores_kind(model, "y") == ScoresKind.PROBABILITIES


# Clip: openWakeWord's melspectrogram clips at max(x) - 80; onnx2torch takes only constant bounds.
def _clip_model(opset: int, low: str, high: str) -> onnx.ModelProto:
    nodes = [helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
             helper.make_node("Sub", ["peak", "range"], ["floor"]),
             helper.make_node("Clip", ["x", low, high], ["y"])]
    return model_of(nodes, [("x", TensorProto.FLOAT, [3, 5])], ["y"],
                    [const("range", 2.5), const("cap", 1.5), const("base", -1.0)], opset=opset)


@pytest.mark.parametrize("opset", [11, 12, 13])
@pytest.mark.parametrize("low,high",
                         [("floor", "cap"), ("floor", ""), ("", "cap"), ("base", "floor"), ("floor", "floor")],
                         ids=["computed-min-constant-max", "computed-min-only", "constant-max-only",
                              "constant-min-computed-max", "min-equals-max"])
def test_clip_with_bounds_computed_in_the_graph(opset, low, high):
    x = np.random.default_rng(opset).permutation(np.linspace(-3, 3, 15)).reshape(3, 5).astype(np.float32)
    check(_clip_model(opset, low, high), {"x": x}, family="control", eps=1e-3, grad_tolerance=2e-2)


def test_clip_with_constant_bounds_and_integers():
    model = model_of([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [("x", TensorProto.INT64, [2, 3])], ["y"],
                     [const("lo", 2, np.int64), const("hi", 4, np.int64)], opset=13,
                     output_types={"y": TensorProto.INT64})
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    got = to_torch(model)(torch.from_numpy(x))
    assert got.dtype == torch.int64 and np.array_equal(got.numpy(), session(model).run(None, {"x": x})[0])


@pytest.mark.parametrize("opset", [11, 13])
def test_a_final_squeeze_with_no_axes_keeps_the_batch_dim_of_one_row(opset):
    """madmom's exports end with a Squeeze of every size-1 dim: [T, 12] becomes [12] for one frame."""
    nodes = [helper.make_node("Unsqueeze", ["x"], ["wide"], axes=[2]) if opset < 13 else
             helper.make_node("Unsqueeze", ["x", "axis"], ["wide"]),
             helper.make_node("Sigmoid", ["wide"], ["probabilities"]),
             helper.make_node("Squeeze", ["probabilities"], ["y"])]
    model = model_of(nodes, [("x", TensorProto.FLOAT, ["T", 4])], ["y"],
                     [const("axis", [2], np.int64)] if opset >= 13 else [], opset=opset)
    rewritten = explicit_squeeze_axes(model)
    squeeze = next(node for node in rewritten.graph.node if node.output[0] == "y")
    assert squeeze.op_type == "Squeeze"
    module = to_torch(model)
    for rows in (3, 1):
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        expected = session(model).run(None, {"x": x})[0]
        got = module(torch.from_numpy(x)).numpy()
        assert got.shape == (rows, 4)
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6, atol=1e-7)
    # nothing of size 1 left but the batch: the Squeeze becomes an Identity
    plain = model_of([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Squeeze", ["s"], ["y"])],
                     [("x", TensorProto.FLOAT, ["T", 4])], ["y"], opset=opset)
    assert [node.op_type for node in explicit_squeeze_axes(plain).graph.node] == ["Sigmoid", "Identity"]
    # a symbolic dim besides the first: left alone
    unknown = model_of([helper.make_node("Squeeze", ["x"], ["y"])], [("x", TensorProto.FLOAT, ["T", "F"])], ["y"],
                       opset=opset)
    assert explicit_squeeze_axes(unknown).graph.node[0] == unknown.graph.node[0]
