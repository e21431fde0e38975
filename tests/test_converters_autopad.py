"""Conv, ConvTranspose, MaxPool, AveragePool and LpPool with auto_pad (SAME_UPPER / SAME_LOWER / VALID),
asymmetric pads, dilations and ceil_mode, one node each, against onnxruntime: outputs and input gradients.

Sizes are chosen so the SAME padding is odd in some dim: there SAME_UPPER and SAME_LOWER differ.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnxattack.bridge.convert import to_torch
from onnxattack.bridge.converters.conv import Conv, ConvTranspose
from onnxattack.bridge.converters.pool import Pool

from .converter_checks import check, const, model_of, session

CONV_CASES = [
    # id, opset, x shape, w shape, attributes
    ("conv1-same-upper-stride2", 9, (2, 3, 8, 7), (4, 3, 3, 2), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("conv11-same-lower-stride2", 11, (2, 3, 8, 7), (4, 3, 3, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("conv22-same-upper-1d-even-kernel", 22, (2, 3, 9), (4, 3, 4), {"auto_pad": "SAME_UPPER", "strides": [2]}),
    ("conv11-same-lower-3d-group", 11, (1, 4, 5, 4, 3), (4, 2, 3, 2, 3),
     {"auto_pad": "SAME_LOWER", "strides": [2, 1, 2], "group": 2}),
    ("conv13-same-lower-kernel-below-stride", 13, (2, 3, 5, 5), (4, 3, 1, 1), {"auto_pad": "SAME_LOWER",
                                                                              "strides": [3, 3]}),
    ("conv11-valid-stride", 11, (2, 3, 8, 7), (4, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
]


def _conv_model(op: str, opset: int, x_shape, w_shape, attributes, weight_input: bool = False, bias: bool = True):
    rng = np.random.default_rng(1)
    out_channels = w_shape[0] if op == "Conv" else w_shape[1] * attributes.get("group", 1)
    initializers = [const("b", rng.normal(size=out_channels))] if bias else []
    inputs = [("x", TensorProto.FLOAT, list(x_shape))]
    if weight_input:
        inputs.append(("w", TensorProto.FLOAT, list(w_shape)))
    else:
        initializers.append(const("w", rng.normal(size=w_shape)))
    node = helper.make_node(op, ["x", "w", "b"] if bias else ["x", "w"], ["y"], **attributes)
    return model_of([node], inputs, ["y"], initializers, opset=opset)


def _feeds(model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {value.name: rng.uniform(-2, 2, size=[d.dim_value for d in value.type.tensor_type.shape.dim])
            .astype(np.float32) for value in model.graph.input}


@pytest.mark.parametrize("name,opset,x_shape,w_shape,attributes", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_conv_auto_pad_matches_onnxruntime(name, opset, x_shape, w_shape, attributes):
    model = _conv_model("Conv", opset, x_shape, w_shape, attributes)
    check(model, _feeds(model), family="conv-auto-pad", atol=1e-4, eps=0.05)  # linear in x: any step


def test_same_upper_and_same_lower_differ_where_the_padding_is_odd():
    outputs = []
    for auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        model = _conv_model("Conv", 11, (2, 3, 8, 7), (4, 3, 3, 2), {"auto_pad": auto_pad, "strides": [2, 2]})
        outputs.append(to_torch(model)(torch.from_numpy(_feeds(model)["x"])).detach().numpy())
        assert any(isinstance(m, Conv) for m in to_torch(model).modules())
    assert outputs[0].shape == outputs[1].shape == (2, 4, 4, 4)
    assert not np.allclose(outputs[0], outputs[1])


def test_dilated_same_conv_follows_the_spec():
    # onnxruntime refuses dilations with SAME on Conv ("Dilation not supported"): the ONNX reference
    # evaluator, which implements the spec, is the reference here.
    model = _conv_model("Conv", 11, (1, 2, 9, 8), (3, 2, 3, 2), {"auto_pad": "SAME_UPPER", "dilations": [2, 3],
                                                                 "strides": [2, 1]})
    feeds = _feeds(model)
    (expected,) = ReferenceEvaluator(model).run(None, feeds)
    got = to_torch(model)(torch.from_numpy(feeds["x"])).detach().numpy()
    assert got.shape == expected.shape == (1, 3, 5, 8)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


CONV_TRANSPOSE_CASES = [
    ("convt11-same-upper", 11, (2, 3, 5, 4), (3, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ("convt11-same-lower", 11, (2, 3, 5, 4), (3, 2, 3, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    ("convt1-same-upper-dilated-1d", 9, (2, 3, 6), (3, 4, 3), {"auto_pad": "SAME_UPPER", "strides": [2],
                                                              "dilations": [2]}),
    ("convt22-same-lower-group", 22, (1, 4, 4, 3), (4, 1, 3, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 3],
                                                                  "group": 2}),
    ("convt11-same-upper-output-padding", 11, (2, 3, 4, 5), (3, 2, 3, 3),
     {"auto_pad": "SAME_UPPER", "strides": [3, 3], "output_padding": [1, 2]}),
    ("convt11-output-shape", 11, (2, 3, 5, 4), (3, 2, 3, 3), {"strides": [2, 2], "output_shape": [10, 9]}),
    ("convt11-output-shape-same-upper", 11, (2, 3, 5, 4), (3, 2, 3, 3),
     {"strides": [2, 2], "output_shape": [10, 8], "auto_pad": "SAME_UPPER"}),
    ("convt11-asymmetric-pads-output-padding", 11, (2, 3, 5, 4), (3, 2, 3, 3),
     {"strides": [2, 2], "pads": [1, 0, 0, 2], "output_padding": [1, 1]}),
    ("convt11-valid", 11, (2, 3, 5, 4), (3, 2, 3, 3), {"auto_pad": "VALID", "strides": [2, 1]}),
]


@pytest.mark.parametrize("name,opset,x_shape,w_shape,attributes", CONV_TRANSPOSE_CASES,
                         ids=[c[0] for c in CONV_TRANSPOSE_CASES])
def test_conv_transpose_auto_pad_and_output_shape_match_onnxruntime(name, opset, x_shape, w_shape, attributes):
    model = _conv_model("ConvTranspose", opset, x_shape, w_shape, attributes)
    check(model, _feeds(model), family="conv-transpose-auto-pad", atol=1e-4, eps=0.05)


POOL_CASES = [
    # id, op, opset, x shape, attributes
    ("maxpool1-same-lower", "MaxPool", 7, (2, 3, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 2],
                                                         "auto_pad": "SAME_LOWER"}),
    ("maxpool8-same-upper", "MaxPool", 8, (2, 3, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 2],
                                                         "auto_pad": "SAME_UPPER"}),
    ("maxpool10-same-upper-ceil", "MaxPool", 10, (2, 3, 7, 5), {"kernel_shape": [2, 2], "strides": [2, 2],
                                                                "auto_pad": "SAME_UPPER", "ceil_mode": 1}),
    ("maxpool12-same-lower-dilated", "MaxPool", 12, (2, 3, 9, 8), {"kernel_shape": [3, 2], "strides": [1, 2],
                                                                   "dilations": [2, 2], "auto_pad": "SAME_LOWER"}),
    ("maxpool11-asymmetric-pads-ceil", "MaxPool", 11, (2, 3, 7, 6), {"kernel_shape": [3, 2], "strides": [2, 2],
                                                                     "pads": [0, 1, 2, 0], "ceil_mode": 1}),
    ("maxpool22-same-upper-1d", "MaxPool", 22, (2, 3, 9), {"kernel_shape": [4], "strides": [3],
                                                           "auto_pad": "SAME_UPPER"}),
    ("maxpool12-valid", "MaxPool", 12, (2, 3, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "VALID"}),
    ("averagepool7-same-lower", "AveragePool", 7, (2, 3, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 2],
                                                                 "auto_pad": "SAME_LOWER"}),
    ("averagepool10-same-upper-count-pad-ceil", "AveragePool", 10, (2, 3, 7, 5),
     {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER", "count_include_pad": 1, "ceil_mode": 1}),
    ("averagepool11-asymmetric-pads-count-pad", "AveragePool", 11, (2, 3, 7, 6),
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 2], "count_include_pad": 1}),
    ("averagepool11-asymmetric-pads-ceil", "AveragePool", 11, (2, 3, 7, 6),
     {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [2, 0, 0, 1], "ceil_mode": 1}),
    ("averagepool19-dilated-ceil-count-pad", "AveragePool", 19, (2, 3, 9, 8),
     {"kernel_shape": [2, 3], "strides": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 0], "ceil_mode": 1,
      "count_include_pad": 1}),
    ("averagepool22-same-lower-3d", "AveragePool", 22, (1, 2, 5, 6, 4),
     {"kernel_shape": [2, 3, 2], "strides": [2, 2, 1], "auto_pad": "SAME_LOWER"}),
    ("averagepool11-valid", "AveragePool", 11, (2, 3, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 2],
                                                              "auto_pad": "VALID"}),
    ("lppool2-same-upper", "LpPool", 9, (2, 3, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 2],
                                                       "auto_pad": "SAME_UPPER"}),
    ("lppool11-same-lower-p1", "LpPool", 11, (2, 3, 8, 7), {"kernel_shape": [3, 2], "strides": [2, 2],
                                                            "auto_pad": "SAME_LOWER", "p": 1}),
    ("lppool18-dilated-ceil-pads-p3", "LpPool", 18, (2, 3, 9, 8),
     {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [2, 1], "pads": [1, 0, 0, 1], "ceil_mode": 1, "p": 3}),
    ("lppool22-valid-1d", "LpPool", 22, (2, 3, 9), {"kernel_shape": [3], "strides": [2], "auto_pad": "VALID"}),
]


@pytest.mark.parametrize("name,op,opset,x_shape,attributes", POOL_CASES, ids=[c[0] for c in POOL_CASES])
def test_pool_auto_pad_matches_onnxruntime(name, op, opset, x_shape, attributes):
    model = model_of([helper.make_node(op, ["x"], ["y"], **attributes)], [("x", TensorProto.FLOAT, list(x_shape))],
                     ["y"], opset=opset)
    check(model, _feeds(model), family=f"{op.lower()}-auto-pad", atol=1e-5, eps=3e-3)


def test_pads_follow_the_input_size_at_run_time():
    """One converted graph, symbolic H x W, two input sizes: SAME pads recomputed for each."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
             helper.make_node("ConvTranspose", ["m", "wt"], ["t"], auto_pad="SAME_UPPER", strides=[2, 2]),
             helper.make_node("LpPool", ["t"], ["y"], kernel_shape=[2, 3], auto_pad="SAME_LOWER")]
    model = model_of(nodes, [("x", TensorProto.FLOAT, ["N", 2, "H", "W"])], ["y"],
                     [const("w", rng.normal(size=(3, 2, 3, 2))), const("wt", rng.normal(size=(3, 2, 3, 3)))],
                     opset=12)
    module = to_torch(model)
    kinds = {type(m) for m in module.modules()}
    assert {Conv, ConvTranspose, Pool} <= kinds
    for shape in [(2, 2, 9, 7), (1, 2, 12, 13)]:
        x = rng.uniform(-2, 2, size=shape).astype(np.float32)
        (expected,) = session(model).run(None, {"x": x})
        got = module(torch.from_numpy(x)).detach().numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
