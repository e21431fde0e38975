"""Pad on any dim, activations, normalisations and misc ops against onnxruntime (outputs and input gradients)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from .converter_checks import check, const, model_of, session


def _ints(name: str, values) -> object:
    return const(name, values, np.int64)


def _floats(name: str, values) -> object:
    return const(name, values, np.float32)


# id, node, opset, initializers, input shape, extra graph inputs {name: array}
CASES = [
    # Pad: onnx2torch's own Pad-11/13 reflect-pads only the last 1-3 dims (tf2onnx MirrorPad of [N, 171, 1])
    ("pad-13-reflect-axis1-rank3", helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect"), 13,
     [_ints("pads", [0, 3, 0, 0, 4, 0])], (2, 7, 1), {}),
    ("pad-11-edge-batch-dim", helper.make_node("Pad", ["x", "pads"], ["y"], mode="edge"), 11,
     [_ints("pads", [1, 0, 2, 0])], (3, 4), {}),
    ("pad-2-reflect-rank5-all",
     helper.make_node("Pad", ["x"], ["y"], mode="reflect", pads=[1, 1, 0, 1, 2, 0, 1, 1, 2, 0]), 2, [],
     (3, 3, 2, 3, 4), {}),
    ("pad-2-constant-value", helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 1, 0], value=1.5), 2, [], (2, 3), {}),
    ("pad-13-constant-negative", helper.make_node("Pad", ["x", "pads", "v"], ["y"]), 13,
     [_ints("pads", [0, -1, 2, 0, 1, -1]), _floats("v", 0.25)], (2, 4, 5), {}),
    ("pad-19-wrap-axis0", helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="wrap"), 19,
     [_ints("pads", [2, 3]), _ints("axes", [0])], (4, 3), {}),
    ("pad-18-edge-axes-unsorted", helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="edge"), 18,
     [_ints("pads", [2, 1, 0, 3]), _ints("axes", [2, 0])], (2, 3, 4), {}),
    ("pad-21-reflect-rank4-dim1", helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect"), 21,
     [_ints("pads", [0, 2, 0, 1, 0, 1, 0, 0])], (2, 4, 3, 3), {}),
    ("pad-13-runtime-pads-reflect", helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect"), 13, [],
     (2, 5, 3), {"pads": np.array([0, 2, 0, 0, 3, 0], dtype=np.int64)}),
    ("pad-13-edge-pad-beyond-size", helper.make_node("Pad", ["x", "pads"], ["y"], mode="edge"), 13,
     [_ints("pads", [0, 5, 0, 6])], (2, 3), {}),
    # activations
    ("mish-18", helper.make_node("Mish", ["x"], ["y"]), 18, [], (3, 20), {}),
    ("mish-22", helper.make_node("Mish", ["x"], ["y"]), 22, [], (3, 20), {}),
    ("thresholdedrelu-10", helper.make_node("ThresholdedRelu", ["x"], ["y"], alpha=0.7), 10, [], (3, 20), {}),
    ("thresholdedrelu-22-default", helper.make_node("ThresholdedRelu", ["x"], ["y"]), 22, [], (3, 20), {}),
    ("shrink-9", helper.make_node("Shrink", ["x"], ["y"], bias=0.3, lambd=0.8), 9, [], (3, 20), {}),
    # normalisations
    ("groupnorm-18-per-group", helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2,
                                                epsilon=1e-3), 18,
     [_floats("s", [1.5, -0.5]), _floats("b", [0.1, 0.2])], (2, 6, 3, 2), {}),
    ("groupnorm-21-per-channel", helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=3), 21,
     [_floats("s", [1.5, -0.5, 2.0, 1.0, 0.7, 0.3]), _floats("b", [0.1, 0.2, 0.0, -0.3, 0.5, 1.0])], (2, 6, 4), {}),
    ("lpnorm-1-p2", helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=2), 1, [], (3, 5, 2), {}),
    ("lpnorm-22-p1-last", helper.make_node("LpNormalization", ["x"], ["y"], p=1), 22, [], (3, 5), {}),
    # misc
    ("globalmaxpool-1", helper.make_node("GlobalMaxPool", ["x"], ["y"]), 1, [], (2, 3, 4, 5), {}),
    ("globalmaxpool-22-1d", helper.make_node("GlobalMaxPool", ["x"], ["y"]), 22, [], (2, 3, 7), {}),
    ("upsample-7-nearest", helper.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 3.0]), 7, [],
     (1, 2, 3, 2), {}),
    ("upsample-9-linear", helper.make_node("Upsample", ["x", "scales"], ["y"], mode="linear"), 9,
     [_floats("scales", [1.0, 1.0, 2.0, 1.5])], (1, 2, 3, 4), {}),
    ("upsample-9-nearest-fraction", helper.make_node("Upsample", ["x", "scales"], ["y"]), 9,
     [_floats("scales", [1.0, 1.0, 1.5, 2.5])], (1, 2, 3, 4), {}),
    ("spacetodepth-13", helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2), 13, [], (2, 3, 4, 6), {}),
    ("reversesequence-time0", helper.make_node("ReverseSequence", ["x", "lens"], ["y"]), 10,
     [_ints("lens", [4, 1, 3])], (5, 3, 2), {}),
    ("reversesequence-batch0", helper.make_node("ReverseSequence", ["x", "lens"], ["y"], batch_axis=0, time_axis=1), 10,
     [_ints("lens", [2, 5])], (2, 5, 3), {}),
    ("trilu-upper-k1", helper.make_node("Trilu", ["x", "k"], ["y"]), 14, [_ints("k", 1)], (2, 4, 5), {}),
    ("trilu-lower", helper.make_node("Trilu", ["x"], ["y"], upper=0), 14, [], (4, 3), {}),
    ("castlike-15", helper.make_node("CastLike", ["x", "like"], ["y"]), 15, [_floats("like", [0.0])], (3, 4), {}),
    ("scatterelements-11", helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1), 11,
     [_ints("i", [[0, 2], [-1, 1]]), _floats("u", [[5.0, 6.0], [7.0, 8.0]])], (2, 4), {}),
    ("scatter-9", helper.make_node("Scatter", ["x", "i", "u"], ["y"], axis=0), 9,
     [_ints("i", [[1, 0, 2]]), _floats("u", [[5.0, 6.0, 7.0]])], (3, 3), {}),
    ("scatterelements-16-add", helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=0, reduction="add"), 16,
     [_ints("i", [[0, 1, 0], [0, 1, 1]]), _floats("u", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])], (3, 3), {}),
    ("scatterelements-16-mul", helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=0, reduction="mul"), 16,
     [_ints("i", [[0, 1, 2]]), _floats("u", [[1.5, -2.0, 3.0]])], (3, 3), {}),
    ("scatterelements-18-max", helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1, reduction="max"), 18,
     [_ints("i", [[0, 0], [2, 1], [1, 2]]), _floats("u", [[0.3, -9.0], [9.0, 0.1], [-0.2, 9.0]])], (3, 3), {}),
    ("scatterelements-18-min", helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1, reduction="min"), 18,
     [_ints("i", [[0, 2], [1, 1], [2, 0]]), _floats("u", [[-9.0, 9.0], [0.05, -9.0], [9.0, -9.0]])], (3, 3), {}),
]

@pytest.mark.parametrize("name,node,opset,initializers,shape,extra", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(name, node, opset, initializers, shape, extra):
    inputs = [("x", TensorProto.FLOAT, list(shape))]
    inputs += [(key, TensorProto.INT64, list(value.shape)) for key, value in extra.items()]
    model = model_of([node], inputs, list(node.output), initializers, opset=opset)
    x = np.random.default_rng(len(name)).uniform(-3, 3, size=shape).astype(np.float32)
    if "lpnorm" in name:
        x = np.abs(x) + 0.2  # p=1: keep away from the kink at 0
    if "maxpool" in name:  # well-separated values: the max does not switch under the FD step
        x = np.random.default_rng(0).permutation(np.linspace(-3, 3, x.size)).reshape(shape).astype(np.float32)
    # eps 1e-2 along a unit direction: float32 rounding stays small, and no element crosses a kink
    # of the piecewise-linear ops at these (fixed) random points.
    check(model, {"x": x, **extra}, family="misc", atol=1e-5, rtol=1e-5, eps=1e-2, grad_tolerance=2e-2)


@pytest.mark.parametrize("opset", [18, 21])
def test_dynamo_export_of_groupnorm_and_mish_converts(tmp_path, opset):
    """opset 18: Mish + GroupNorm decomposed (InstanceNormalization, Reshape); 21: GroupNormalization-21."""
    import onnx
    import torch
    from torch import nn

    from onnxattack.bridge import normalise

    from . import exporters

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.norm = nn.GroupNorm(2, 4)
            self.fc = nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            return self.fc(nn.functional.mish(self.norm(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    path = exporters.export_torch(net, torch.rand(2, 1, 6, 6), tmp_path / "gn.onnx", dynamo=True, opset=opset)
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert "Mish" in ops and ("GroupNormalization" in ops if opset == 21 else "InstanceNormalization" in ops)
    graph = normalise.drop_reshape_allowzero(normalise.constants_to_initializers(normalise.inline_functions(model)))
    x = np.random.default_rng(0).random((3, 1, 6, 6), dtype=np.float32)
    check(graph, {"input": x}, family="dynamo-groupnorm-mish", grad=("input",), atol=1e-5, rtol=1e-4, eps=1e-2)
    with torch.no_grad():
        assert np.abs(net(torch.from_numpy(x)).numpy() - session(graph).run(None, {"input": x})[0]).max() < 1e-4


@pytest.mark.parametrize("opset", [13, 21])
def test_size_matches_onnxruntime(opset):
    """Size (silero-vad's LSTM branches test it): the element count as int64, here scaling x."""
    nodes = [helper.make_node("Size", ["x"], ["n"]), helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "nf"], ["y"])]
    model = model_of(nodes, [("x", TensorProto.FLOAT, [2, 3, 4])], ["y", "n"],
                     output_types={"n": TensorProto.INT64}, opset=opset)
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 3, 4)).astype(np.float32)
    check(model, {"x": x}, family="misc", atol=1e-5, rtol=1e-5, eps=1e-2, grad_tolerance=2e-2)
