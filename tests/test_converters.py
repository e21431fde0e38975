"""Each project converter, on a one-node graph, against onnxruntime over a wide input range."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnxattack.bridge.convert import to_torch
from onnxattack.bridge.converters.indexing import ConstantSlice
from onnxattack.bridge.converters.reshape import ConstantShapeReshape


def _graph(node: onnx.NodeProto, opset: int, in_shape, out_shapes, initializers=()) -> onnx.ModelProto:
    del out_shapes
    elem = TensorProto.INT64 if node.op_type == "Shape" else TensorProto.FLOAT
    outputs = [helper.make_tensor_value_info(name, elem, None) for name in node.output]
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


CASES = [
    ("gelu-exact-20", helper.make_node("Gelu", ["x"], ["y"]), 20, (), (3, 50)),
    ("gelu-tanh-20", helper.make_node("Gelu", ["x"], ["y"], approximate="tanh"), 20, (), (3, 50)),
    ("reducemean-18-neg-axis", helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0), 18,
     (_ints("axes", [-1]),), (3, 4, 5)),
    ("reducemax-18-two-axes", helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=1), 18,
     (_ints("axes", [0, -1]),), (3, 4, 5)),
    ("reducemin-20-no-axes", helper.make_node("ReduceMin", ["x"], ["y"], keepdims=0), 20, (), (3, 4, 5)),
    ("reducel2-18", helper.make_node("ReduceL2", ["x", "axes"], ["y"]), 18, (_ints("axes", [1]),), (3, 4, 5)),
    ("reduceprod-18-two-axes", helper.make_node("ReduceProd", ["x", "axes"], ["y"], keepdims=0), 18,
     (_ints("axes", [2, 1]),), (2, 3, 2)),
    ("reducelogsumexp-18", helper.make_node("ReduceLogSumExp", ["x", "axes"], ["y"]), 18,
     (_ints("axes", [1]),), (3, 4, 5)),
    ("reducemean-18-noop", helper.make_node("ReduceMean", ["x"], ["y"], noop_with_empty_axes=1), 18, (), (3, 4)),
    ("reshape-19", helper.make_node("Reshape", ["x", "shape"], ["y"]), 19, (_ints("shape", [0, -1]),), (3, 4, 5)),
    ("reshape-21-allowzero", helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1), 21,
     (_ints("shape", [3, 20]),), (3, 4, 5)),
    ("split-18-num-outputs", helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3), 18, (), (2, 8)),
    ("split-18-sizes", helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1), 18,
     (_ints("sizes", [3, 5]),), (2, 8)),
    ("pad-19-axes-reflect", helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="reflect"), 19,
     (_ints("pads", [1, 2]), _ints("axes", [-1])), (2, 3, 6)),
    ("pad-19-unsorted-axes", helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"]), 19,
     (_ints("pads", [1, 0, 3, 2]), _ints("axes", [-1, 1])), (2, 3, 6)),
    ("pad-18-constant", helper.make_node("Pad", ["x", "pads", "value"], ["y"]), 18,
     (_ints("pads", [0, 1, 2, 0, 2, 1]), numpy_helper.from_array(np.array(0.5, dtype=np.float32), "value")),
     (2, 3, 4)),
    ("averagepool-19", helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]), 19, (),
     (1, 2, 6, 6)),
    ("cast-19", helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT), 19, (), (3, 4)),
    ("shape-19-slice", helper.make_node("Shape", ["x"], ["y"], start=1), 19, (), (3, 4, 5)),
]


@pytest.mark.parametrize("name,node,opset,initializers,shape", CASES, ids=[c[0] for c in CASES])
def test_converter_matches_onnxruntime(name, node, opset, initializers, shape):
    model = _graph(node, opset, list(shape), None, initializers)
    x = np.random.default_rng(0).uniform(-4, 4, size=shape).astype(np.float32)
    if "prod" in name or "logsumexp" in name:
        x = np.abs(x) + 0.5
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    module = to_torch(model)
    got = module(torch.from_numpy(x))
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert tuple(mine.shape) == theirs.shape
        np.testing.assert_allclose(mine.detach().numpy().astype(np.float64), theirs.astype(np.float64),
                                   rtol=1e-5, atol=1e-6)


def test_dilated_average_pool_converts_and_matches_onnxruntime():
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])
    model = _graph(node, 19, [1, 1, 6, 6], None)
    x = np.random.default_rng(0).uniform(-4, 4, size=(1, 1, 6, 6)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(to_torch(model)(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [5, 13, 14, 19, 21])
def test_a_constant_reshape_shape_is_held_by_the_module_and_a_computed_one_read_per_call(opset):
    """A constant shape (0 = copy the input's size, -1 = infer) is read once at conversion; a shape the graph
    computes (Shape -> Slice -> Concat, as dynamic-batch exports write) is still read on every call, so a
    second batch size reshapes to its own rows."""
    constant = _graph(helper.make_node("Reshape", ["x", "shape"], ["y"]), opset, [3, 4, 5], None,
                      (_ints("shape", [0, -1]),))
    nodes = [helper.make_node("Shape", ["x"], ["dims"]),
             helper.make_node("Slice", ["dims", "zero", "one"], ["batch"]),
             helper.make_node("Concat", ["batch", "rest"], ["shape"], axis=0),
             helper.make_node("Reshape", ["shape_input", "shape"], ["y"])]
    nodes.insert(0, helper.make_node("Identity", ["x"], ["shape_input"]))
    graph = helper.make_graph(nodes, "computed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_ints("zero", [0]), _ints("one", [1]), _ints("rest", [20])])
    computed = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, 13))])
    for model, held in ((constant, True), (computed, False)):
        module = to_torch(model)
        assert any(isinstance(m, ConstantShapeReshape) for m in module.modules()) == held
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        for rows in ((3,) if held else (3, 7)):
            x = np.random.default_rng(rows).normal(size=(rows, 4, 5)).astype(np.float32)
            (expected,) = session.run(None, {"x": x})
            np.testing.assert_array_equal(module(torch.from_numpy(x)).numpy(), expected)


_MAX, _MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min
SLICES = [  # opset, starts, ends, axes, steps (None: left out); opsets 1 and 9 take them as attributes
    (13, [1], [_MAX], [1], [1]),
    (13, [-1], [_MIN], [-1], [-1]),
    (13, [5, 0], [-7, 4], [1, 0], [-2, 3]),
    (13, [100], [-100], [1], [-1]),
    (13, [-2], [-1], [2], [-1]),
    (11, [0, 1], [2, -1], None, None),
    (10, [-100], [100], [2], None),
    (9, [1, 0], [3, 1000], [0, 2], None),
    (1, [0], [-1], None, None),
]


@pytest.mark.parametrize("opset,starts,ends,axes,steps", SLICES,
                         ids=[f"slice-{case[0]}-{i}" for i, case in enumerate(SLICES)])
def test_a_constant_slice_is_held_by_the_module_and_matches_onnxruntime(opset, starts, ends, axes, steps):
    """onnx2torch reads Slice's bound tensors on every call and fails on Slice-9 at its first; constant
    bounds (negative steps, out-of-range and INT64 extremes included) become slices held by the module."""
    if opset < 10:
        extra = {} if axes is None else {"axes": axes}
        node = helper.make_node("Slice", ["x"], ["y"], starts=starts, ends=ends, **extra)
        initializers = []
    else:
        bounds = [("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps)]
        given = [(name, values) for name, values in bounds if values is not None]
        node = helper.make_node("Slice", ["x", *[name for name, _ in given]], ["y"])
        initializers = [_ints(name, values) for name, values in given]
    model = _graph(node, opset, [4, 6, 5], None, initializers)
    x = np.random.default_rng(0).normal(size=(4, 6, 5)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    module = to_torch(model)
    assert any(isinstance(m, ConstantSlice) for m in module.modules())
    np.testing.assert_array_equal(module(torch.from_numpy(x)).numpy(), expected)


def test_slice_bounds_computed_at_run_time_stay_with_onnx2torch():
    nodes = [helper.make_node("Shape", ["x"], ["dims"]), helper.make_node("Gather", ["dims", "last"], ["end"], axis=0),
             helper.make_node("Sub", ["end", "one"], ["stop"]),
             helper.make_node("Slice", ["x", "one", "stop", "axis"], ["y"])]
    graph = helper.make_graph(nodes, "computed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [_ints("last", [1]), _ints("one", [1]), _ints("axis", [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"x": x})
    module = to_torch(model)
    assert not any(isinstance(m, ConstantSlice) for m in module.modules())
    np.testing.assert_array_equal(module(torch.from_numpy(x)).numpy(), expected)
