"""Conversion failures become one-line ConversionErrors naming the op; registration tolerates upstream converters."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx2torch.node_converters import registry
from onnx2torch.node_converters.registry import OperationDescription, get_converter

from onnxattack.bridge.convert import to_torch
from onnxattack.bridge.converters import _common
from onnxattack.bridge.converters.structure import Pad
from onnxattack.errors import ConversionError
from onnxattack.loader import load

from .converter_checks import const, model_of, session


def test_a_converter_that_raises_gives_a_conversion_error_naming_the_node():
    # onnx2torch's MaxPool converter refuses storage_order=1 (NotImplementedError) inside onnx2torch.
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu_1"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool_1", kernel_shape=[2, 2], storage_order=1)]
    model = model_of(nodes, [("x", TensorProto.FLOAT, [1, 2, 5, 5])], ["y"], opset=13)
    session(model).run(None, {"x": np.ones((1, 2, 5, 5), np.float32)})  # a valid graph for onnxruntime
    with pytest.raises(ConversionError) as caught:
        to_torch(model)
    message = str(caught.value)
    assert "MaxPool-12 (node 'pool_1')" in message and "NotImplementedError" in message and "\n" not in message
    assert caught.value.blocking_ops == ["MaxPool-12"]
    assert caught.value.exit_code == 3


def test_a_project_converter_refusal_names_op_version_and_node():
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="blocked_q", block_size=2, axis=1)
    model = model_of([node], [("x", TensorProto.FLOAT, [2, 4])], ["y"], [const("s", np.ones((2, 2))),
                                                                          const("z", np.zeros((2, 2)), np.int8)],
                     opset=21, output_types={"y": TensorProto.INT8})
    with pytest.raises(ConversionError, match=r"QuantizeLinear-21 \(node 'blocked_q'\).*block_size"):
        to_torch(model)


def _half_lrn_model(path: Path) -> Path:
    """onnxruntime runs LRN in float16; torch's CPU LRN (avg_pool3d) has no Half kernel: the forward fails."""
    nodes = [helper.make_node("Unsqueeze", ["input", "axes"], ["image"]),
             helper.make_node("Cast", ["image"], ["half"], to=TensorProto.FLOAT16),
             helper.make_node("LRN", ["half"], ["normalised"], size=3, name="lrn_half"),
             helper.make_node("Cast", ["normalised"], ["back"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["back"], ["scores"])]
    model = model_of(nodes, [("input", TensorProto.FLOAT, ["N", 6])], ["scores"],
                     [const("axes", [2, 3], np.int64)], opset=13)
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_value = 6
    onnx.save(model, str(path))
    return path


def test_a_forward_that_raises_in_the_fidelity_check_gives_a_conversion_error(tmp_path):
    path = _half_lrn_model(tmp_path / "half_lrn.onnx")
    with pytest.raises(ConversionError) as caught:
        load(path, device="cpu")
    message = str(caught.value)
    assert "fails in its forward at LRN-13 (node 'lrn_half')" in message, message
    assert "\n" not in message and caught.value.blocking_ops == ["LRN-13"]


def test_registration_leaves_upstream_versions_to_onnx2torch_unless_told():
    def ours(node, graph):
        raise AssertionError("never called")

    upstream_relu = get_converter("Relu", 14)
    _common.register("Relu", [14])(ours)  # onnx2torch converts Relu-14 itself: left to it
    assert get_converter("Relu", 14) is upstream_relu
    # A newer onnx2torch bringing its own converter for one of our (op, version) pairs:
    key = OperationDescription(domain="", operation_type="OnnxattackProbe", version=1)
    registry._CONVERTER_REGISTRY[key] = upstream_relu
    try:
        _common.register("OnnxattackProbe", [1])(ours)
        assert registry._CONVERTER_REGISTRY[key] is upstream_relu
        _common.register("OnnxattackProbe", [1], override_upstream=True)(ours)
        assert registry._CONVERTER_REGISTRY[key] is ours
    finally:
        del registry._CONVERTER_REGISTRY[key]
        _common._OWN.discard(key)


def test_pad_overrides_onnx2torch_on_purpose():
    for version in (2, 11, 13, 18, 19, 21, 23):
        key = OperationDescription(domain="", operation_type="Pad", version=version)
        assert key in _common.own_registrations()
    node = helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")
    model = model_of([node], [("x", TensorProto.FLOAT, [2, 5, 1])], ["y"],
                     [const("pads", [0, 2, 0, 0, 2, 0], np.int64)], opset=13)
    module = to_torch(model)
    assert any(isinstance(m, Pad) for m in module.modules())


def test_every_converter_module_registers_through_the_helper():
    package = Path(_common.__file__).parent
    for source in sorted(set(package.glob("*.py")) - {Path(_common.__file__)}):
        text = source.read_text()
        assert not re.search(r"\badd_converter\b", text), f"{source.name} bypasses _common.register"


def test_ml_domain_nodes_get_legal_module_names():
    node = helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", name="scale.me", offset=[1.0], scale=[2.0])
    model = model_of([node], [("x", TensorProto.FLOAT, [None, 3])], ["y"], ml_opset=1)
    module = to_torch(model)
    assert all("." not in name.split(".")[-1] for name, _ in module.named_children())
    assert torch.allclose(module(torch.ones(2, 3)), torch.zeros(2, 3))
