"""QuantizeLinear / DequantizeLinear against onnxruntime: one-node graphs and quantize_static QDQ models."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from onnxattack.bridge.convert import to_torch

from .converter_checks import const, model_of, record, session

SCALE = 0.05


def _run_both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    expected = session(model).run(None, feeds)
    module = to_torch(model)
    got = module(*(torch.from_numpy(feeds[v.name]) for v in model.graph.input))
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    return [g.detach().numpy() for g in got], expected


def _wide_input(shape, seed: int = 0) -> np.ndarray:
    """Values well past saturation, plus exact ties k + 0.5 (round half to even decides them)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-12, 12, size=shape).astype(np.float32)
    flat = x.reshape(-1)
    ties = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5], dtype=np.float32) * np.float32(SCALE)
    flat[: len(ties)] = ties
    return x


Q_CASES = [
    # id, opset, zero point (values, dtype) or None, axis, scale shape, attributes
    ("q10-uint8-default", 10, None, None, (), {}),
    ("q10-uint8-zp", 10, ([3], np.uint8), None, (), {}),
    ("q13-int8-per-axis", 13, ([0, -3, 5, 1], np.int8), 1, (4,), {}),
    ("q13-uint8-per-axis-last", 13, ([128, 0, 17, 255, 3], np.uint8), -1, (5,), {}),
    ("q19-int8", 19, ([-2], np.int8), None, (), {}),
    ("q21-int8-per-axis", 21, ([1, 2, 3, 4], np.int8), 1, (4,), {}),
    ("q21-int16-output-dtype", 21, None, None, (), {"output_dtype": TensorProto.INT16}),
    ("q21-uint16-zp", 21, ([1000], np.uint16), None, (), {}),
]


@pytest.mark.parametrize("name,opset,zero_point,axis,scale_shape,attributes", Q_CASES, ids=[c[0] for c in Q_CASES])
def test_quantize_linear_is_exact(name, opset, zero_point, axis, scale_shape, attributes):
    shape = (3, 4, 2, 5)
    scale = np.full(scale_shape, SCALE, dtype=np.float32) * (1 + np.arange(np.prod(scale_shape, dtype=int)))\
        .reshape(scale_shape).astype(np.float32) if scale_shape else np.float32(SCALE)
    initializers = [const("scale", scale)]
    inputs = ["x", "scale"]
    if zero_point is not None:
        values, dtype = zero_point
        initializers.append(const("zp", np.asarray(values, dtype=dtype).reshape(scale_shape or ()), dtype))
        inputs.append("zp")
    if axis is not None:
        attributes = {**attributes, "axis": axis}
    node = helper.make_node("QuantizeLinear", inputs, ["y"], **attributes)
    out_type = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8, np.uint16: TensorProto.UINT16}
    element = out_type[zero_point[1]] if zero_point else attributes.get("output_dtype", TensorProto.UINT8)
    model = model_of([node], [("x", TensorProto.FLOAT, list(shape))], ["y"], initializers, opset=opset,
                     output_types={"y": element})
    x = _wide_input(shape) * (50 if element in (TensorProto.INT16, TensorProto.UINT16) else 1)
    (got,), (expected,) = _run_both(model, {"x": x})
    assert got.dtype == np.float32  # integers held in a float tensor
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert got.min() < got.max()
    record("quantize", 0.0, 0.0)


DQ_CASES = [
    ("dq10-uint8", 10, np.uint8, None, ()),
    ("dq13-int8-per-axis", 13, np.int8, 1, (4,)),
    ("dq19-uint8-per-axis-neg", 19, np.uint8, -1, (5,)),
    ("dq21-int8", 21, np.int8, None, ()),
    ("dq21-int32-bias", 21, np.int32, None, ()),
]


@pytest.mark.parametrize("name,opset,dtype,axis,scale_shape", DQ_CASES, ids=[c[0] for c in DQ_CASES])
def test_dequantize_linear_of_an_integer_tensor(name, opset, dtype, axis, scale_shape):
    shape = (3, 4, 2, 5)
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    q = rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True).astype(dtype)
    count = int(np.prod(scale_shape, dtype=int))
    scale = (rng.uniform(0.01, 0.2, size=scale_shape)).astype(np.float32)
    initializers = [const("scale", scale), const("q", q, dtype)]
    inputs = ["q", "scale"]
    if dtype != np.int32:
        initializers.append(const("zp", rng.integers(info.min, min(info.max, 200), size=count).astype(dtype)
                                  .reshape(scale_shape), dtype))
        inputs.append("zp")
    node_attributes = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("DequantizeLinear", inputs, ["deq"], **node_attributes),
             helper.make_node("Add", ["deq", "x"], ["y"])]
    model = model_of(nodes, [("x", TensorProto.FLOAT, list(shape))], ["y"], initializers, opset=opset)
    x = rng.normal(size=shape).astype(np.float32)
    (got,), (expected,) = _run_both(model, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    record("quantize", float(np.abs(got - expected).max()), 0.0)


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
def test_qdq_pair_forward_exact_and_gradient_straight_through(opset):
    shape = (2, 3, 4)
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"])]
    model = model_of(nodes, [("x", TensorProto.FLOAT, list(shape))], ["y"],
                     [const("scale", SCALE), const("zp", 10, np.int8)], opset=opset)
    x = _wide_input(shape, seed=opset)
    (got,), (expected,) = _run_both(model, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    x_t = torch.from_numpy(x).requires_grad_(True)
    (gradient,) = torch.autograd.grad(to_torch(model)(x_t).sum(), x_t)
    inside = (np.round(x / np.float32(SCALE)) + 10 >= -128) & (np.round(x / np.float32(SCALE)) + 10 <= 127)
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(gradient.numpy(), inside.astype(np.float32), atol=1e-6)
    record("quantize", float(np.abs(got - expected).max()), 0.0)


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(h.flatten(1))


def _qdq_model(tmp_path, per_channel: bool) -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    net = _SmallCNN().eval()
    float_path, qdq_path = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 1, 8, 8),), str(float_path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["scores"],
                          dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}})
    rng = np.random.default_rng(0)
    calibration = [rng.random((1, 1, 8, 8), dtype=np.float32) for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"input": item}

    quantize_static(str(float_path), str(qdq_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return onnx.load(str(float_path)), onnx.load(str(qdq_path)), rng.random((16, 1, 8, 8), dtype=np.float32)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_quantize_static_qdq_model_matches_onnxruntime(tmp_path, per_channel):
    float_model, qdq, x = _qdq_model(tmp_path, per_channel)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in qdq.graph.node}
    module = to_torch(qdq)
    x_t = torch.from_numpy(x).requires_grad_(True)
    scores = module(x_t)
    mine = scores.detach().numpy()
    emulated = session(qdq, optimise=False).run(None, {"input": x})[0]  # QDQ computed as written
    basic = session(qdq, level="ORT_ENABLE_BASIC").run(None, {"input": x})[0]  # no QDQ fusion yet
    fused = session(qdq).run(None, {"input": x})[0]  # ORT_ENABLE_ALL: QLinearConv etc. integer kernels
    unfused_difference = float(np.abs(mine - emulated).max())
    basic_difference = float(np.abs(mine - basic).max())
    fused_difference = float(np.abs(mine - fused).max())
    assert unfused_difference <= 1e-4, unfused_difference
    assert basic_difference <= 1e-4, basic_difference
    # The fused integer kernels (u8s8 on AVX2 without VNNI here) land up to ~20 output steps away.
    output_scale = float(onnx.numpy_helper.to_array(
        next(i for i in qdq.graph.initializer if i.name == [n for n in qdq.graph.node][-1].input[1])))
    assert fused_difference <= 50 * output_scale, (fused_difference, output_scale)
    record("qdq-model-vs-ort-disable-all", unfused_difference, 0.0)
    record("qdq-model-vs-ort-basic", basic_difference, 0.0)
    record("qdq-model-vs-ort-all-fused", fused_difference, 0.0)
    # Straight-through input gradient: close in direction to the float model's true gradient.
    weights = torch.from_numpy(np.random.default_rng(2).normal(size=mine.shape).astype(np.float32))
    (gradient,) = torch.autograd.grad((scores * weights).sum(), x_t)
    float_module = to_torch(float_model)
    x_f = torch.from_numpy(x).requires_grad_(True)
    (float_gradient,) = torch.autograd.grad((float_module(x_f) * weights).sum(), x_f)
    cosine = float(torch.nn.functional.cosine_similarity(gradient.flatten(), float_gradient.flatten(), dim=0))
    assert cosine > 0.9, cosine
    record("qdq-model-gradient-1-minus-cosine-vs-float", 0.0, 1 - cosine)
