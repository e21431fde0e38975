"""Dynamic int8 ops (quantize_dynamic's DynamicQuantizeLinear, MatMulInteger, ConvInteger; com.microsoft
DynamicQuantizeMatMul, MatMulIntegerToFloat, DynamicQuantizeLSTM) against onnxruntime, one node each.

Forward: exact, or within float rounding of the integer products. Gradients: straight-through across
the rounding (the float inputs' gradient is that of the product with the dequantised weights)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from onnxattack.bridge.convert import to_torch

from .converter_checks import const, model_of, record, session

U8, I8 = TensorProto.UINT8, TensorProto.INT8
NP = {U8: np.uint8, I8: np.int8}


def _ms_model(nodes, inputs, outputs, initializers=(), output_types=None) -> onnx.ModelProto:
    model = model_of(nodes, inputs, outputs, initializers, opset=17, output_types=output_types)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def _run_both(model: onnx.ModelProto, feeds: dict[str, np.ndarray], dtype=torch.float32,
              wrt: str | None = None):
    expected = session(model).run(None, feeds)
    module = to_torch(model).to(dtype)
    tensors = {}
    for value in model.graph.input:
        tensor = torch.from_numpy(feeds[value.name])
        tensors[value.name] = tensor.to(dtype).requires_grad_(value.name == wrt) if tensor.is_floating_point() \
            else tensor
    got = module(*tensors.values())
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    return got, expected, tensors


def _integers(rng, element: int, shape) -> np.ndarray:
    info = np.iinfo(NP[element])
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(NP[element])


def _dql_model() -> onnx.ModelProto:
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zp"])
    return model_of([node], [("x", TensorProto.FLOAT, None)], ["y", "scale", "zp"], opset=11,
                    output_types={"y": U8, "zp": U8})


DQL_INPUTS = {
    "normal": np.random.default_rng(0).normal(size=(4, 50)),
    "positive": np.random.default_rng(1).uniform(0.2, 3.0, size=(30,)),
    "negative": -np.random.default_rng(2).uniform(0.2, 3.0, size=(5, 6)),
    "all-zero": np.zeros((3, 4)),
    "constant": np.full((7,), 2.5),
    "ties": np.array([0.0, 255.0, 0.5, 1.5, 2.5, 126.5, 253.5, 254.5]),  # scale exactly 1: x / scale ties
    "zero-point-tie": np.array([-127.5, 127.5, -0.5, 0.5, 3.5]),  # scale 1, -min / scale = 127.5
    "tiny": np.array([1e-30, -3e-31, 0.0]),
}


@pytest.mark.parametrize("name", list(DQL_INPUTS), ids=list(DQL_INPUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_dynamic_quantize_linear_is_exact(name, dtype):
    x = DQL_INPUTS[name].astype(np.float32)
    got, expected, _ = _run_both(_dql_model(), {"x": x}, dtype)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.dtype == dtype  # integers held in a float tensor
        np.testing.assert_array_equal(mine.detach().numpy().astype(np.float32), theirs.astype(np.float32))
    if name == "all-zero":  # onnxruntime's convention where the range is empty
        assert float(expected[1]) == 1.0 and int(expected[2]) == 0
    record("DynamicQuantizeLinear", 0.0, 0.0)


def test_dynamic_quantize_linear_gradient_is_straight_through():
    x = np.random.default_rng(3).normal(size=(6, 9)).astype(np.float32)
    got, expected, tensors = _run_both(_dql_model(), {"x": x}, torch.float64, wrt="x")
    y, scale, zero_point = got
    assert not scale.requires_grad and not zero_point.requires_grad  # held constant
    weights = torch.from_numpy(np.random.default_rng(4).normal(size=x.shape))
    (gradient,) = torch.autograd.grad((y * weights).sum(), tensors["x"])
    np.testing.assert_allclose(gradient.numpy(), weights.numpy() / float(expected[1]), rtol=1e-6)
    record("DynamicQuantizeLinear", 0.0, float(np.abs(gradient.numpy() * float(expected[1]) - weights.numpy()).max()))


MATMUL_CASES = [
    # id, A type, B type, A shape, B shape, a zero point, b zero point ("column": one per column)
    ("u8u8-2d", U8, U8, (5, 7), (7, 3), 128, 3),
    ("u8s8-2d", U8, I8, (5, 7), (7, 3), 17, -2),
    ("u8s8-batched", U8, I8, (2, 4, 7), (7, 3), 200, 0),
    ("s8s8-no-zp", I8, I8, (5, 7), (7, 3), None, None),
    ("u8s8-per-column", U8, I8, (5, 7), (7, 3), 9, "column"),
]


def _matmul_integer_model(case, weights_constant: bool):
    _, a_type, b_type, a_shape, b_shape, a_zp, b_zp = case
    rng = np.random.default_rng(5)
    b = _integers(rng, b_type, b_shape)
    initializers, inputs, names = [], [("a", a_type, list(a_shape))], ["a", "b"]
    feeds = {"a": _integers(rng, a_type, a_shape)}
    if weights_constant:
        initializers.append(const("b", b, NP[b_type]))
    else:
        inputs.append(("b", b_type, list(b_shape)))
        feeds["b"] = b
    names += ["a_zp" if a_zp is not None else "", "b_zp" if b_zp is not None else ""]
    if a_zp is not None:
        initializers.append(const("a_zp", a_zp, NP[a_type]))
    if b_zp == "column":
        initializers.append(const("b_zp", _integers(rng, b_type, (b_shape[-1],)), NP[b_type]))
    elif b_zp is not None:
        initializers.append(const("b_zp", b_zp, NP[b_type]))
    while names[-1] == "":
        names.pop()
    node = helper.make_node("MatMulInteger", names, ["y"])
    return model_of([node], inputs, ["y"], initializers, opset=10, output_types={"y": TensorProto.INT32}), feeds


@pytest.mark.parametrize("weights_constant", [True, False], ids=["weights-initializer", "weights-input"])
@pytest.mark.parametrize("case", MATMUL_CASES, ids=[c[0] for c in MATMUL_CASES])
def test_matmul_integer_is_exact(case, weights_constant):
    model, feeds = _matmul_integer_model(case, weights_constant)
    (got,), (expected,), _ = _run_both(model, feeds)
    assert expected.dtype == np.int32 and np.abs(expected).max() > 1000
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))
    record("MatMulInteger", 0.0, 0.0)


CONV_CASES = [
    # id, x type, w type, attributes (onnxruntime takes only a per-tensor filter zero point)
    ("u8s8-pad1", U8, I8, {"pads": [1, 1, 1, 1]}),
    ("u8u8-stride2-asymmetric-pad", U8, U8, {"pads": [0, 1, 2, 0], "strides": [2, 2]}),
    ("u8s8-dilated-grouped", U8, I8, {"pads": [2, 2, 2, 2], "dilations": [2, 2], "group": 2}),
    ("u8s8-same-upper", U8, I8, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("u8s8-same-lower", U8, I8, {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_integer_is_exact_and_pads_with_the_zero_point(case):
    _, x_type, w_type, attributes = case
    rng = np.random.default_rng(6)
    group = attributes.get("group", 1)
    w = _integers(rng, w_type, (4, 4 // group, 3, 3))
    initializers = [const("w", w, NP[w_type]), const("x_zp", 100, NP[x_type]), const("w_zp", 5, NP[w_type])]
    node = helper.make_node("ConvInteger", ["x", "w", "x_zp", "w_zp"], ["y"], **attributes)
    model = model_of([node], [("x", x_type, [2, 4, 7, 7])], ["y"], initializers, opset=10,
                     output_types={"y": TensorProto.INT32})
    feeds = {"x": _integers(rng, x_type, (2, 4, 7, 7))}
    expected = session(model).run(None, feeds)[0]
    got = to_torch(model)(torch.from_numpy(feeds["x"]))
    assert np.abs(expected).max() > 1000
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))
    record("ConvInteger", 0.0, 0.0)


@pytest.mark.parametrize("b_type", [I8, U8], ids=["s8", "u8"])
@pytest.mark.parametrize("per_column", [False, True], ids=["per-tensor", "per-column"])
def test_matmul_integer_to_float(b_type, per_column):
    rng = np.random.default_rng(7)
    b_scale = rng.uniform(0.001, 0.01, size=(3,) if per_column else ()).astype(np.float32)
    b_zp = _integers(rng, b_type, (3,)) if per_column else np.asarray(4, dtype=NP[b_type])
    initializers = [const("b", _integers(rng, b_type, (7, 3)), NP[b_type]), const("a_scale", 0.02),
                    const("b_scale", b_scale), const("a_zp", 120, np.uint8), const("b_zp", b_zp, NP[b_type]),
                    const("bias", rng.normal(size=3))]
    node = helper.make_node("MatMulIntegerToFloat", ["a", "b", "a_scale", "b_scale", "a_zp", "b_zp", "bias"], ["y"],
                            domain="com.microsoft")
    model = _ms_model([node], [("a", U8, [2, 5, 7])], ["y"], initializers)
    feeds = {"a": _integers(rng, U8, (2, 5, 7))}
    (got,), (expected,), _ = _run_both(model, feeds)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)
    record("MatMulIntegerToFloat", float(np.abs(got.numpy() - expected).max()), 0.0)


@pytest.mark.parametrize("b_type", [I8, U8], ids=["s8", "u8"])
@pytest.mark.parametrize("per_column", [False, True], ids=["per-tensor", "per-column"])
def test_dynamic_quantize_matmul_forward_and_straight_through_gradient(b_type, per_column):
    rng = np.random.default_rng(8)
    b = _integers(rng, b_type, (7, 3))
    b_scale = rng.uniform(0.001, 0.01, size=(3,) if per_column else ()).astype(np.float32)
    b_zp = _integers(rng, b_type, (3,)) if per_column else np.asarray(-3 if b_type == I8 else 9, dtype=NP[b_type])
    bias = rng.normal(size=3).astype(np.float32)
    initializers = [const("b", b, NP[b_type]), const("b_scale", b_scale), const("b_zp", b_zp, NP[b_type]),
                    const("bias", bias)]
    node = helper.make_node("DynamicQuantizeMatMul", ["a", "b", "b_scale", "b_zp", "bias"], ["y"],
                            domain="com.microsoft")
    model = _ms_model([node], [("a", TensorProto.FLOAT, [2, 5, 7])], ["y"], initializers)
    feeds = {"a": rng.normal(size=(2, 5, 7)).astype(np.float32)}
    (got,), (expected,), tensors = _run_both(model, feeds, wrt="a")
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    weights = torch.from_numpy(rng.normal(size=expected.shape).astype(np.float32))
    (gradient,) = torch.autograd.grad((got * weights).sum(), tensors["a"])
    dequantised = (b.astype(np.float32) - b_zp.astype(np.float32)) * b_scale
    reference = weights.numpy() @ dequantised.T
    np.testing.assert_allclose(gradient.numpy(), reference, rtol=1e-5, atol=1e-6)
    record("DynamicQuantizeMatMul", float(np.abs(got.detach().numpy() - expected).max()),
           float(np.abs(gradient.numpy() - reference).max()))


def _lstm_model(rng, weight_type: int, direction: str, per_channel: bool, extras: bool):
    dirs, hidden, features = (2 if direction == "bidirectional" else 1), 5, 4
    gates = 4 * hidden
    scale_shape = (dirs, gates) if per_channel else (dirs,)
    w, r = _integers(rng, weight_type, (dirs, features, gates)), _integers(rng, weight_type, (dirs, hidden, gates))
    w_scale, r_scale = (rng.uniform(0.01, 0.05, size=scale_shape).astype(np.float32) for _ in range(2))
    # centred like quantize_dynamic's weights; onnxruntime refuses non-zero per-channel zero points
    centre = 0 if per_channel else (128 if weight_type == U8 else 3)
    w_zp, r_zp = (np.full(scale_shape, centre, dtype=NP[weight_type]) for _ in range(2))
    if weight_type == U8:  # values around the zero point, as a real quantiser's are
        w, r = ((m.astype(np.int64) // 2 + 64).astype(np.uint8) for m in (w, r))
    initializers = [const("W", w, NP[weight_type]), const("R", r, NP[weight_type]),
                    const("B", rng.normal(size=(dirs, 2 * gates)) * 0.3),
                    const("W_scale", w_scale), const("W_zp", w_zp, NP[weight_type]),
                    const("R_scale", r_scale), const("R_zp", r_zp, NP[weight_type])]
    inputs = [("x", TensorProto.FLOAT, [6, 3, features])]
    names = ["x", "W", "R", "B", "", "", "", ""]
    if extras:
        initializers.append(const("P", rng.normal(size=(dirs, 3 * hidden)) * 0.3))
        inputs += [("h0", TensorProto.FLOAT, [dirs, 3, hidden]), ("c0", TensorProto.FLOAT, [dirs, 3, hidden])]
        names[5:8] = ["h0", "c0", "P"]
    names += ["W_scale", "W_zp", "R_scale", "R_zp"]
    node = helper.make_node("DynamicQuantizeLSTM", names, ["y", "y_h", "y_c"], domain="com.microsoft",
                            hidden_size=hidden, direction=direction)
    model = _ms_model([node], inputs, ["y", "y_h", "y_c"], initializers)
    dequantised = [((w.astype(np.float32) - w_zp.astype(np.float32)[:, None]) * w_scale[:, None]),
                   ((r.astype(np.float32) - r_zp.astype(np.float32)[:, None]) * r_scale[:, None])] \
        if per_channel else \
        [((w.astype(np.float32) - w_zp.astype(np.float32)[:, None, None]) * w_scale[:, None, None]),
         ((r.astype(np.float32) - r_zp.astype(np.float32)[:, None, None]) * r_scale[:, None, None])]
    return model, dequantised


LSTM_CASES = [("s8-forward", I8, "forward", False, False), ("u8-reverse", U8, "reverse", False, False),
              ("s8-bidirectional-per-channel-initial-state-peepholes", I8, "bidirectional", True, True)]


@pytest.mark.parametrize("case", LSTM_CASES, ids=[c[0] for c in LSTM_CASES])
def test_dynamic_quantize_lstm_matches_a_single_threaded_onnxruntime(case):
    _, weight_type, direction, per_channel, extras = case
    rng = np.random.default_rng(9)
    model, dequantised = _lstm_model(rng, weight_type, direction, per_channel, extras)
    dirs = 2 if direction == "bidirectional" else 1
    feeds = {"x": rng.normal(size=(6, 3, 4)).astype(np.float32)}
    if extras:
        feeds.update(h0=rng.normal(size=(dirs, 3, 5)).astype(np.float32) * 0.5,
                     c0=rng.normal(size=(dirs, 3, 5)).astype(np.float32) * 0.5)
    got, expected, tensors = _run_both(model, feeds, wrt="x")  # session(): one intra-op thread
    worst = max(float(np.abs(g.detach().numpy() - e).max()) for g, e in zip(got, expected, strict=True))
    assert worst <= 2e-6, worst
    # Straight-through gradient: close in direction to a float LSTM's over the dequantised weights.
    weights = [torch.from_numpy(rng.normal(size=e.shape).astype(np.float32)) for e in expected]
    (gradient,) = torch.autograd.grad(sum((g * w).sum() for g, w in zip(got, weights, strict=True)), tensors["x"])
    float_gradient = _float_lstm_gradient(model, direction, dequantised, feeds, weights)
    cosine = float(torch.nn.functional.cosine_similarity(gradient.flatten(), float_gradient.flatten(), dim=0))
    assert cosine > 0.95, cosine
    record("DynamicQuantizeLSTM", worst, 1 - cosine)


def _float_lstm_gradient(model: onnx.ModelProto, direction: str, dequantised, feeds, weights) -> torch.Tensor:
    """The input gradient of the same LSTM in float (ONNX LSTM, W [dirs, 4H, in]) with dequantised weights."""
    node = model.graph.node[0]
    inputs = list(node.input[:8])
    inputs[1], inputs[2] = "Wf", "Rf"
    lstm = helper.make_node("LSTM", inputs, list(node.output), hidden_size=5, direction=direction)
    initializers = [i for i in model.graph.initializer if i.name in inputs]
    initializers += [const("Wf", dequantised[0].transpose(0, 2, 1)), const("Rf", dequantised[1].transpose(0, 2, 1))]
    inputs_info = [(v.name, TensorProto.FLOAT, None) for v in model.graph.input]
    float_model = model_of([lstm], inputs_info, list(node.output), initializers, opset=14)
    tensors = [torch.from_numpy(feeds[v.name]).requires_grad_(v.name == "x") for v in model.graph.input]
    outputs = to_torch(float_model)(*tensors)
    (gradient,) = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs, weights, strict=True)), tensors[0])
    return gradient


@pytest.mark.parametrize("per_column", [False, True], ids=["per-tensor", "per-column"])
@pytest.mark.parametrize("mask", [False, True], ids=["no-mask", "lengths-mask"])
def test_qattention_projects_in_integers_then_attends(per_column, mask):
    rng = np.random.default_rng(10)
    weight_scale = rng.uniform(0.002, 0.01, size=(24,) if per_column else ()).astype(np.float32)
    initializers = [const("w", _integers(rng, I8, (6, 24)), np.int8), const("bias", rng.normal(size=24)),
                    const("x_scale", 0.02), const("w_scale", weight_scale), const("x_zp", 130, np.uint8),
                    const("w_zp", np.zeros(weight_scale.shape), np.int8)]
    names = ["x", "w", "bias", "x_scale", "w_scale", "mask" if mask else "", "x_zp", "w_zp"]
    if mask:
        initializers.append(const("mask", [3, 5], np.int32))
    node = helper.make_node("QAttention", names, ["y"], domain="com.microsoft", num_heads=2)
    model = _ms_model([node], [("x", U8, [2, 5, 6])], ["y"], initializers)
    (got,), (expected,), _ = _run_both(model, {"x": _integers(rng, U8, (2, 5, 6))})
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=2e-6)
    record("QAttention", float(np.abs(got.numpy() - expected).max()), 0.0)
