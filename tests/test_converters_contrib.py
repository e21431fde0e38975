"""com.microsoft FusedMatMul, FastGelu, BiasGelu, Gelu and SkipLayerNormalization against onnxruntime:
outputs, and input gradients against onnxruntime's central differences."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from .converter_checks import check, const, model_of

F = TensorProto.FLOAT
# onnxruntime's GELU kernels give float32 outputs up to ~9 here (rounding ~1e-6): central differences
# over 1e-3 steps are noise-dominated (2.8% off), over 1e-2 steps they are not.
EPS = 1e-2


def _ms_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    model = model_of(nodes, inputs, outputs, initializers, opset=17)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def _normal(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


FUSED_CASES = [
    # id, A shape, B shape, attributes
    ("plain-batched", (2, 3, 4), (4, 5), {}),
    ("alpha-transB", (2, 3, 4), (5, 4), {"alpha": 0.125, "transB": 1}),
    ("transA-transB-4d", (2, 2, 4, 3), (2, 2, 5, 4), {"transA": 1, "transB": 1, "alpha": -2.0}),
    ("vector-operand", (4,), (2, 4, 3), {"transB": 0}),
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=[c[0] for c in FUSED_CASES])
def test_fused_matmul(case):
    _, a_shape, b_shape, attributes = case
    node = helper.make_node("FusedMatMul", ["x", "b"], ["y"], domain="com.microsoft", **attributes)
    model = _ms_model([node], [("x", F, list(a_shape)), ("b", F, list(b_shape))], ["y"])
    check(model, {"x": _normal(*a_shape), "b": _normal(*b_shape, seed=1)}, family="FusedMatMul", grad=("x", "b"))


def test_fused_matmul_with_transposed_batches_is_refused():
    from onnxattack.bridge.convert import to_torch
    from onnxattack.errors import ConversionError

    node = helper.make_node("FusedMatMul", ["x", "b"], ["y"], domain="com.microsoft", transBatchA=1)
    model = _ms_model([node], [("x", F, [2, 3, 4]), ("b", F, [4, 5])], ["y"])
    with pytest.raises(ConversionError, match="transBatchA"):
        to_torch(model)


@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_fast_gelu(with_bias):
    inputs = ["x", "bias"] if with_bias else ["x"]
    initializers = [const("bias", _normal(6, seed=2))] if with_bias else []
    node = helper.make_node("FastGelu", inputs, ["y"], domain="com.microsoft")
    model = _ms_model([node], [("x", F, [3, 4, 6])], ["y"], initializers)
    check(model, {"x": _normal(3, 4, 6) * 3}, family="FastGelu", eps=EPS)


@pytest.mark.parametrize("op", ["BiasGelu", "Gelu"])
def test_bias_gelu_and_gelu(op):
    inputs = ["x", "bias"] if op == "BiasGelu" else ["x"]
    initializers = [const("bias", _normal(6, seed=3))] if op == "BiasGelu" else []
    node = helper.make_node(op, inputs, ["y"], domain="com.microsoft")
    model = _ms_model([node], [("x", F, [3, 4, 6])], ["y"], initializers)
    check(model, {"x": _normal(3, 4, 6) * 3}, family=op, eps=EPS)


SKIP_CASES = [
    # id, skip shape, beta, bias, outputs, epsilon
    ("full-skip-beta-bias", (2, 3, 8), True, True, ["y"], None),
    ("broadcast-skip-no-beta", (1, 3, 8), False, False, ["y"], 1e-5),
    ("2d-skip-all-outputs", (3, 8), True, True, ["y", "mean", "inv_std", "sum"], None),
]


@pytest.mark.parametrize("case", SKIP_CASES, ids=[c[0] for c in SKIP_CASES])
def test_skip_layer_normalization(case):
    _, skip_shape, beta, bias, outputs, epsilon = case
    rng = np.random.default_rng(4)
    initializers = [const("gamma", rng.normal(size=8))]
    names = ["x", "skip", "gamma", "beta" if beta else "", "bias" if bias else ""]
    if beta:
        initializers.append(const("beta", rng.normal(size=8)))
    if bias:
        initializers.append(const("bias", rng.normal(size=8)))
    while names[-1] == "":
        names.pop()
    attributes = {} if epsilon is None else {"epsilon": epsilon}
    node = helper.make_node("SkipLayerNormalization", names, outputs, domain="com.microsoft", **attributes)
    model = _ms_model([node], [("x", F, [2, 3, 8]), ("skip", F, list(skip_shape))], outputs, initializers)
    feeds = {"x": _normal(2, 3, 8, seed=5) * 2 + 1, "skip": _normal(*skip_shape, seed=6)}
    check(model, feeds, family="SkipLayerNormalization", grad=("x", "skip"), atol=2e-5, rtol=2e-5)


LN_CASES = [
    # id, opset (below 17: onnxruntime's own schema), axis, outputs, bias
    ("opset14-last-axis", 14, -1, ["y"], True),
    ("opset14-axis1-mean-inv-std", 14, 1, ["y", "mean", "inv_std"], False),
    ("opset17-no-value-info", 17, -1, ["y"], True),
]


@pytest.mark.parametrize("case", LN_CASES, ids=[c[0] for c in LN_CASES])
def test_layer_normalization_as_onnxruntimes_optimiser_writes_it(case):
    _, opset, axis, outputs, bias = case
    rng = np.random.default_rng(7)
    normalised = (3, 8) if axis == 1 else (8,)
    initializers = [const("scale", rng.normal(size=normalised))] + ([const("bias", rng.normal(size=normalised))]
                                                                   if bias else [])
    nodes = [helper.make_node("Add", ["x", "x"], ["twice"]),  # a computed input: no value_info for its shape
             helper.make_node("LayerNormalization", ["twice", "scale"] + (["bias"] if bias else []), outputs,
                              axis=axis)]
    model = model_of(nodes, [("x", F, [2, 3, 8])], outputs, initializers, opset=opset)
    check(model, {"x": _normal(2, 3, 8, seed=8) + 1}, family="LayerNormalization", atol=2e-5, rtol=2e-5)


ATTENTION_CASES = [
    # id, attributes, mask_index (values as int32) or None, attention_bias
    ("plain", {}, None, False),
    ("raw-2d-mask-scale", {"scale": 0.3}, np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), False),
    ("raw-3d-mask", {}, (np.random.default_rng(9).random((2, 5, 5)) > 0.3).astype(np.int32) | np.eye(5, dtype=np.int32),
     False),
    ("right-padding-lengths", {}, np.array([3, 5]), False),
    ("left-padding-ends-starts", {}, np.array([5, 4, 1, 0]), False),
    ("unidirectional-qkv-sizes-bias", {"unidirectional": 1, "qkv_hidden_sizes": [8, 8, 12]}, None, True),
    ("mask-filter-value", {"mask_filter_value": -50.0}, np.array([2, 4]), False),
]


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_attention(case):
    _, attributes, mask, with_bias = case
    rng = np.random.default_rng(10)
    sizes = attributes.get("qkv_hidden_sizes", [8, 8, 8])
    initializers = [const("weights", rng.normal(size=(6, sum(sizes))) * 0.5),
                    const("bias", rng.normal(size=sum(sizes)))]
    names = ["x", "weights", "bias", "", "", ""]
    inputs = [("x", F, [2, 5, 6])]
    feeds = {"x": _normal(2, 5, 6, seed=11)}
    if mask is not None:
        names[3] = "mask"
        initializers.append(const("mask", mask, np.int32))
    if with_bias:
        names[5] = "attention_bias"
        inputs.append(("attention_bias", F, [2, 2, 5, 5]))
        feeds["attention_bias"] = _normal(2, 2, 5, 5, seed=12)
    while names[-1] == "":
        names.pop()
    node = helper.make_node("Attention", names, ["y"], domain="com.microsoft", num_heads=2, **attributes)
    model = _ms_model([node], inputs, ["y"], initializers)
    # eps 1e-2: onnxruntime's float32 differences over 1e-3 steps were 2.7% off in one direction of one
    # case (0.8% over 1e-2 steps) while its outputs agree to 4e-7
    check(model, feeds, family="Attention", grad=tuple(feeds), atol=2e-5, rtol=2e-5, eps=EPS)


def test_attention_with_a_past_state_is_refused():
    from onnxattack.bridge.convert import to_torch
    from onnxattack.errors import ConversionError

    node = helper.make_node("Attention", ["x", "w", "b", "", "past"], ["y"], domain="com.microsoft", num_heads=2)
    model = _ms_model([node], [("x", F, [2, 5, 6]), ("past", F, [2, 2, 2, 3, 4])], ["y"],
                      [const("w", np.ones((6, 24))), const("b", np.zeros(24))])
    with pytest.raises(ConversionError, match="past"):
        to_torch(model)
