"""normalise.fold_constants: weights computed from constants become initializers, and onnxruntime's
output never changes (checked with onnxruntime on the folded and the original graph)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxattack.bridge.convert import to_torch
from onnxattack.bridge.normalise import constants_to_initializers, fold_constants

from .converter_checks import const, model_of, session

F = TensorProto.FLOAT


def _fake_quantized_cnn(opset: int):
    """float weight -> QuantizeLinear -> DequantizeLinear -> Conv (per channel at opset >= 13), activations
    fake-quantized too; a Transpose'd MatMul weight and a Reshape'd + Cast bias for the head."""
    rng = np.random.default_rng(opset)
    per_channel = opset >= 13
    w_scale = rng.uniform(0.01, 0.03, size=4 if per_channel else ()).astype(np.float32)
    axis = {"axis": 0} if per_channel else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "a_scale", "a_zero"], ["xd"]),
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zero"], ["wq"], **axis),
        helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["wd"], **axis),
        helper.make_node("Conv", ["xd", "wd", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Transpose", ["head_t"], ["head"], perm=[1, 0]),
        helper.make_node("MatMul", ["f", "head"], ["m"]),
        helper.make_node("Reshape", ["bias64", "bias_shape"], ["bias_r"]),
        helper.make_node("Cast", ["bias_r"], ["bias"], to=F),
        helper.make_node("Add", ["m", "bias"], ["y"]),
    ]
    zero_points = (np.zeros(4, np.int8) if per_channel else np.int8(0))
    initializers = [const("a_scale", 1 / 64), const("a_zero", 0, np.uint8), const("w", rng.normal(size=(4, 1, 3, 3))),
                    const("w_scale", w_scale), const("w_zero", zero_points, np.int8), const("b", rng.normal(size=4)),
                    const("head_t", rng.normal(size=(3, 4 * 5 * 5))), const("bias64", rng.normal(size=(1, 3)),
                                                                            np.float64),
                    const("bias_shape", [3], np.int64)]
    return model_of(nodes, [("x", F, ["N", 1, 5, 5])], ["y"], initializers, opset=opset)


@pytest.mark.parametrize("opset", [10, 13, 20])
def test_folding_fake_quantized_weights_keeps_onnxruntime_output(opset):
    model = _fake_quantized_cnn(opset)
    folded = fold_constants(model)
    ops = [node.op_type for node in folded.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "Conv", "Relu", "Flatten", "MatMul", "Add"]  # activations kept
    names = {init.name for init in folded.graph.initializer}
    assert {"wd", "head", "bias"} <= names and not {"w", "head_t", "bias64", "wq"} & names
    x = np.random.default_rng(0).uniform(0, 1, size=(6, 1, 5, 5)).astype(np.float32)
    for level in (None, "ORT_ENABLE_BASIC"):
        original = session(model, optimise=level is not None, level=level).run(None, {"x": x})[0]
        after = session(folded, optimise=level is not None, level=level).run(None, {"x": x})[0]
        np.testing.assert_array_equal(after, original)
    # the folded weight is exactly what onnxruntime's QuantizeLinear -> DequantizeLinear makes of w
    (weight,) = [init for init in folded.graph.initializer if init.name == "wd"]
    w = next(i for i in model.graph.initializer if i.name == "w")
    probe = model_of(model.graph.node[2:4], [], ["wd"], [w, *[i for i in model.graph.initializer
                                                              if i.name in ("w_scale", "w_zero")]], opset=opset)
    expected = session(probe, optimise=False).run(None, {})[0]
    np.testing.assert_array_equal(numpy_helper.to_array(weight), expected)
    assert not np.array_equal(expected, numpy_helper.to_array(w))  # quantisation did change it
    # and the folded graph converts, with the Conv weight an initializer, matching onnxruntime
    got = to_torch(folded)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, session(model, optimise=False).run(None, {"x": x})[0], atol=1e-4)


def test_inputs_overridable_defaults_random_ops_and_outputs_are_not_folded():
    nodes = [helper.make_node("Relu", ["default_w"], ["w1"]),
             helper.make_node("RandomNormal", [], ["noise"], shape=[3], seed=1.0),
             helper.make_node("Add", ["noise", "c"], ["n2"]),
             helper.make_node("Mul", ["x", "w1"], ["m"]),
             helper.make_node("Add", ["m", "n2"], ["y"])]
    model = model_of(nodes, [("x", F, [2, 3]), ("default_w", F, [3])], ["y"],
                     [const("default_w", [1.0, -2.0, 3.0]), const("c", [1.0, 1.0, 1.0])])
    assert fold_constants(model) is model
    only_output = model_of([helper.make_node("Neg", ["c"], ["y"]), helper.make_node("Relu", ["x"], ["z"])],
                           [("x", F, [2, 3])], ["y", "z"], [const("c", [1.0, 2.0, 3.0])])
    assert fold_constants(only_output) is only_output


def test_chains_of_shape_ops_on_constants_fold_into_one_initializer():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Reshape", ["flat", "shape"], ["w3"]),
             helper.make_node("Transpose", ["w3"], ["w_t"], perm=[1, 0]),
             helper.make_node("Cast", ["w_t"], ["w"], to=F),
             helper.make_node("Gemm", ["x", "w", "bias"], ["y"], transB=1)]
    model = model_of(nodes, [("x", F, ["N", 4])], ["y"],
                     [const("flat", rng.normal(size=12), np.float16), const("shape", [4, 3], np.int64),
                      const("bias", rng.normal(size=3))], opset=13)
    folded = fold_constants(model)
    assert [node.op_type for node in folded.graph.node] == ["Gemm"]
    x = rng.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(session(folded, optimise=False).run(None, {"x": x})[0],
                                  session(model, optimise=False).run(None, {"x": x})[0])


class _WeightsComputedInForward(torch.nn.Module):
    """Weights reshaped, transposed and scaled in forward: exported without the exporter's constant folding,
    the graph computes them from initializers."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = torch.nn.Parameter(torch.randn(36))
        self.head = torch.nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        h = torch.nn.functional.conv2d(x, self.kernel.reshape(4, 1, 3, 3) * 0.5, padding=1)
        return torch.tanh(h).mean(dim=(2, 3)) @ self.head.t().t()


@pytest.mark.parametrize("kind", ["qdq-static-quantiser", "torch-without-constant-folding"])
def test_folding_real_exports_never_changes_onnxruntime_output(tmp_path, kind):
    import warnings

    import onnx

    from .test_converters_quantize import _qdq_model

    torch.manual_seed(0)
    if kind == "qdq-static-quantiser":
        _, model, x = _qdq_model(tmp_path, per_channel=True)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_WeightsComputedInForward().eval(), (torch.rand(2, 1, 6, 6),), str(tmp_path / "m.onnx"),
                              dynamo=False, opset_version=13, do_constant_folding=False, input_names=["input"],
                              dynamic_axes={"input": {0: "batch"}})
        model = constants_to_initializers(onnx.load(str(tmp_path / "m.onnx")))  # as loader.py does first
        x = np.random.default_rng(1).random((4, 1, 6, 6), dtype=np.float32)
    folded = fold_constants(model)
    assert len(folded.graph.node) < len(model.graph.node)  # something was folded
    name = model.graph.input[0].name
    exact = session(model, optimise=False).run(None, {name: x})[0]  # every node as written
    np.testing.assert_array_equal(session(folded, optimise=False).run(None, {name: x})[0], exact)
    basic = session(model, level="ORT_ENABLE_BASIC").run(None, {name: x})[0]
    if kind != "qdq-static-quantiser":
        np.testing.assert_array_equal(session(folded, level="ORT_ENABLE_BASIC").run(None, {name: x})[0], basic)
        return
    # Measured: onnxruntime's basic optimisations treat the folded QDQ graph differently (one output step
    # apart on some rows), but only the original ever runs in onnxruntime; the folded one is converted,
    # and its torch graph must meet the original's verdict session (basic level) as before.
    assert not any(init.data_type in (TensorProto.INT8, TensorProto.INT32) for init in folded.graph.initializer)
    got = to_torch(folded)(torch.from_numpy(x)).numpy()
    assert float(np.abs(got - basic).max()) <= 1e-4 and float(np.abs(got - exact).max()) <= 1e-4
