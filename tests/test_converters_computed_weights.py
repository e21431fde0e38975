"""Conv, ConvTranspose, Gemm and MatMul whose weight (and bias) is a computed tensor, not an initializer:
a graph input, or a function of the input. Checked against onnxruntime, gradients to every float input.

onnx2torch's own Gemm and MatMul converters already take computed operands (Gemm-7, opsets 7-8,
had no converter: aliases.py maps it to Gemm-9); its Conv and ConvTranspose looked the weight up
among initializers (KeyError): conv.py covers those.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from .converter_checks import check, const, model_of

F = TensorProto.FLOAT


def _feeds(model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {value.name: rng.uniform(-2, 2, size=[d.dim_value for d in value.type.tensor_type.shape.dim])
            .astype(np.float32) for value in model.graph.input}


CASES = [
    # id, nodes, inputs, initializers, opset, inputs differentiated
    ("conv-weight-and-bias-inputs",
     [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 0, 1], dilations=[2, 1], strides=[1, 2])],
     [("x", F, [2, 3, 7, 6]), ("w", F, [4, 3, 3, 2]), ("b", F, [4])], [], 13, ("x", "w", "b")),
    ("conv-weight-from-the-input",  # a dynamic filter: the kernel is a function of the input itself
     [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
      helper.make_node("Slice", ["m", "starts", "ends", "axes"], ["k"]),
      helper.make_node("Conv", ["x", "k"], ["y"], auto_pad="SAME_UPPER")],
     [("x", F, [3, 1, 6, 5])], [const("starts", [0, 0], np.int64), const("ends", [3, 2], np.int64),
                                const("axes", [2, 3], np.int64)], 13, ("x",)),
    ("conv-weight-relu-of-initializer-1d",
     [helper.make_node("Relu", ["w0"], ["w"]), helper.make_node("Conv", ["x", "w"], ["y"], group=3)],
     [("x", F, [2, 3, 9])], [const("w0", np.random.default_rng(2).normal(size=(6, 1, 3)))], 11, ("x",)),
    ("conv-transpose-weight-input",
     [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                       output_padding=[1, 0])],
     [("x", F, [2, 3, 4, 5]), ("w", F, [3, 2, 3, 3]), ("b", F, [2])], [], 11, ("x", "w", "b")),
    ("gemm-computed-b-trans-a-trans-b",
     [helper.make_node("Tanh", ["v"], ["b"]),
      helper.make_node("Gemm", ["x", "b", "c"], ["y"], transA=1, transB=1, alpha=0.7, beta=1.3)],
     [("x", F, [4, 3]), ("v", F, [5, 4]), ("c", F, [1, 5])], [], 13, ("x", "v", "c")),
    ("gemm-two-activations",
     [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gemm", ["x", "r"], ["y"], transB=1)],
     [("x", F, [3, 4])], [], 11, ("x",)),
    ("gemm-9-bias-computed",
     [helper.make_node("Neg", ["c0"], ["c"]), helper.make_node("Gemm", ["x", "w", "c"], ["y"])],
     [("x", F, [3, 4]), ("c0", F, [5])], [const("w", np.random.default_rng(3).normal(size=(4, 5)))], 9, ("x", "c0")),
    ("gemm-7-computed-b",
     [helper.make_node("Relu", ["v"], ["b"]), helper.make_node("Gemm", ["x", "b", "c"], ["y"], alpha=2.0)],
     [("x", F, [3, 4]), ("v", F, [4, 5]), ("c", F, [5])], [], 8, ("x", "v", "c")),
    ("matmul-two-activations-batched",
     [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["x", "xt"], ["y"])],
     [("x", F, [2, 3, 4])], [], 13, ("x",)),
    ("matmul-computed-weight-broadcast",
     [helper.make_node("Sigmoid", ["v"], ["w"]), helper.make_node("MatMul", ["x", "w"], ["y"])],
     [("x", F, [2, 3, 4]), ("v", F, [4, 5])], [], 9, ("x", "v")),
    ("matmul-vector",
     [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["x", "v"], ["y"])],
     [("x", F, [3, 4]), ("v", F, [4])], [], 7, ("x", "v")),
]


@pytest.mark.parametrize("name,nodes,inputs,initializers,opset,grad", CASES, ids=[c[0] for c in CASES])
def test_computed_weights_match_onnxruntime(name, nodes, inputs, initializers, opset, grad):
    model = model_of(nodes, inputs, ["y"], initializers, opset=opset)
    family = "conv-computed-weight" if name.startswith("conv") else f"{name.split('-')[0]}-computed-weight"
    check(model, _feeds(model), family=family, grad=grad, atol=1e-4, eps=1e-2)
