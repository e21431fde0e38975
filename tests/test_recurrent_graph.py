"""What the loader leaves of real GRU / LSTM exports (legacy and dynamo exporters): no per-call weight
reordering, no graph-built zero initial state, static Squeeze / Gather; scores still onnxruntime's and
input gradients still the native module's."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from onnxattack import load
from onnxattack.bridge.convert import to_torch
from onnxattack.bridge.converters.indexing import SelectIndex, SqueezeAxes
from onnxattack.bridge.converters.recurrent import Recurrent
from onnxattack.bridge.normalise import drop_zero_initial_states
from onnxattack.bridge.trace import TracedGraph

from . import exporters as ex
from .converter_checks import check, const, model_of

FRAMES, FEATURES, HIDDEN, LABELS = 7, 6, 8, 5


class Tagger(nn.Module):
    """A recurrent layer over [frames, features] (batch first) with a linear head on its last step."""

    def __init__(self, cell: type[nn.Module], bidirectional: bool) -> None:
        super().__init__()
        self.rnn = cell(FEATURES, HIDDEN, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(HIDDEN * (2 if bidirectional else 1), LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _fx(graph: torch.nn.Module) -> torch.fx.GraphModule:
    while not isinstance(graph, torch.fx.GraphModule):
        graph = graph.graph
    return graph


CASES = [(cell, bidirectional, dynamo) for cell in (nn.GRU, nn.LSTM) for bidirectional in (False, True)
         for dynamo in (False, True)]


IDS = [f"{c.__name__}-{'bi' if b else 'uni'}-{'dynamo' if d else 'legacy'}" for c, b, d in CASES]


@pytest.mark.parametrize("cell,bidirectional,dynamo", CASES, ids=IDS)
def test_a_recurrent_export_runs_on_prepared_weights_without_its_zero_state_chain(tmp_path, cell, bidirectional,
                                                                                   dynamo, monkeypatch):
    torch.manual_seed(0)
    net = Tagger(cell, bidirectional).eval()
    path = ex.export_torch(nn.Sequential(net, nn.Sigmoid()), torch.rand(2, FRAMES, FEATURES), tmp_path / "rnn.onnx",
                           dynamo=dynamo, opset=18 if dynamo else 14)
    kinds = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert kinds & {"ConstantOfShape", "Expand"}, "the export no longer builds its zero state: the test proves nothing"
    model = load(path, device="cpu", trace=False)
    fx = _fx(model.graph)
    modules = [fx.get_submodule(node.target) for node in fx.graph.nodes if node.op == "call_module"]
    assert not any(type(module).__name__ in ("OnnxConstantOfShape", "OnnxExpand") for module in modules)
    (recurrent,) = [module for module in modules if isinstance(module, Recurrent)]
    (call,) = [node for node in fx.graph.nodes if node.op == "call_module" and fx.get_submodule(node.target)
               is recurrent]
    assert len(call.args) <= 4 and not call.kwargs, "an initial state is still computed in the graph"
    assert recurrent.prepared, "W, R, B are constants: their torch order belongs to the conversion"
    monkeypatch.setattr(Recurrent, "torch_parameters", lambda *_: pytest.fail("weights reordered per call"))

    x = np.random.default_rng(1).uniform(0, 1, (9, FRAMES, FEATURES)).astype(np.float32)
    leaf = torch.from_numpy(x).requires_grad_(True)
    logits = model.attack_logits(leaf)
    np.testing.assert_allclose(torch.sigmoid(logits).detach().numpy(), model.ort_scores(x), atol=1e-5, rtol=1e-4)
    weights = torch.linspace(-1, 1, logits.numel()).reshape(logits.shape)
    (mine,) = torch.autograd.grad((logits * weights).sum(), leaf)
    native_leaf = torch.from_numpy(x).requires_grad_(True)
    (native,) = torch.autograd.grad((net(native_leaf) * weights).sum(), native_leaf)
    torch.testing.assert_close(mine, native, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM], ids=["gru", "lstm"])
def test_the_trace_of_a_legacy_export_holds_no_weight_concatenation_or_shape_arithmetic(tmp_path, cell):
    torch.manual_seed(0)
    net = Tagger(cell, bidirectional=False).eval()
    path = ex.export_torch(nn.Sequential(net, nn.Sigmoid()), torch.rand(2, FRAMES, FEATURES), tmp_path / "rnn.onnx",
                           dynamo=False, opset=14)
    model = load(path, device="cpu", trace=False)
    traced = TracedGraph(model.graph, min_saving=-float("inf"))  # kept whatever the timing says
    x = torch.rand(8, FRAMES, FEATURES)
    with torch.no_grad():
        traced(x)
    assert traced.status == "traced"
    (trace,) = traced.traces.values()
    ops = {node.kind() for node in trace.inlined_graph.nodes()}
    assert ops.isdisjoint({"aten::cat", "aten::full", "aten::sort", "aten::unbind"}), sorted(ops)
    assert {"aten::gru", "aten::lstm"} & ops
    torch.testing.assert_close(traced(x), net(x), rtol=1e-5, atol=1e-6)


def _gru_with_state(state_nodes: list[onnx.NodeProto], extra_outputs: tuple[str, ...] = ()) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    initializers = [const("W", rng.normal(scale=0.5, size=(1, 3 * HIDDEN, FEATURES))),
                    const("R", rng.normal(scale=0.5, size=(1, 3 * HIDDEN, HIDDEN))),
                    const("B", rng.normal(scale=0.3, size=(1, 6 * HIDDEN))),
                    const("state_shape", [1, 3, HIDDEN], np.int64)]
    gru = helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["Y", "Y_h"], hidden_size=HIDDEN,
                           linear_before_reset=1)
    return model_of([*state_nodes, gru], [("x", TensorProto.FLOAT, [FRAMES, 3, FEATURES])],
                    ["Y_h", *extra_outputs], initializers, opset=14)


def _fill(value: float) -> onnx.NodeProto:
    return helper.make_node("ConstantOfShape", ["state_shape"], ["h0"],
                            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value]))


def test_only_zero_initial_states_are_dropped_and_the_graph_still_matches_onnxruntime():
    feeds = {"x": np.random.default_rng(2).normal(size=(FRAMES, 3, FEATURES)).astype(np.float32)}
    zero = _gru_with_state([_fill(0.0)])
    dropped = drop_zero_initial_states(zero)
    assert [node.op_type for node in dropped.graph.node] == ["GRU"]
    assert list(dropped.graph.node[0].input)[5] == ""
    check(zero, feeds, family="recurrent", grad_tolerance=2e-2)

    half = _gru_with_state([_fill(0.5)])  # not ONNX's default state: it must stay
    assert drop_zero_initial_states(half) is half
    check(half, feeds, family="recurrent", grad_tolerance=2e-2)

    # the zeros also feed another output: the GRU no longer reads them, the fill stays for its other reader
    shared = _gru_with_state([_fill(0.0), helper.make_node("Identity", ["h0"], ["h0_copy"])], ("h0_copy",))
    kept = drop_zero_initial_states(shared)
    assert [node.op_type for node in kept.graph.node] == ["ConstantOfShape", "Identity", "GRU"]
    check(shared, feeds, family="recurrent", grad_tolerance=2e-2)


def test_constant_squeeze_axes_and_gather_index_become_static_modules():
    x = np.random.default_rng(3).normal(size=(4, 1, 5, 1)).astype(np.float32)
    squeeze = model_of([helper.make_node("Squeeze", ["x", "axes"], ["y"])], [("x", TensorProto.FLOAT, [4, 1, 5, 1])],
                       ["y"], [const("axes", [-1, 1], np.int64)], opset=13)
    gather = model_of([helper.make_node("Gather", ["x", "index"], ["y"], axis=-2)],
                      [("x", TensorProto.FLOAT, [4, 1, 5, 1])], ["y"], [const("index", -1, np.int64)], opset=13)
    rows = model_of([helper.make_node("Gather", ["x", "index"], ["y"], axis=2)],
                    [("x", TensorProto.FLOAT, [4, 1, 5, 1])], ["y"], [const("index", [4, 0, 4], np.int64)], opset=13)
    for model, static in ((squeeze, SqueezeAxes), (gather, SelectIndex), (rows, None)):
        check(model, {"x": x}, family="indexing")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            modules = list(to_torch(model).modules())
        if static is not None:
            assert any(isinstance(module, static) for module in modules)
        else:  # a row of indices keeps onnx2torch's Gather
            assert not any(isinstance(module, (SqueezeAxes, SelectIndex)) for module in modules)


def test_computed_weights_keep_the_per_call_reordering():
    """W fed at run time: nothing to prepare at conversion, the torch kernel still computes the node."""
    rng = np.random.default_rng(4)
    w = rng.normal(scale=0.5, size=(1, 3 * HIDDEN, FEATURES)).astype(np.float32)
    gru = helper.make_node("GRU", ["x", "W", "R", "B"], ["Y"], hidden_size=HIDDEN, linear_before_reset=1)
    model = model_of([gru], [("x", TensorProto.FLOAT, [FRAMES, 2, FEATURES]), ("W", TensorProto.FLOAT, list(w.shape))],
                     ["Y"], [const("R", rng.normal(scale=0.5, size=(1, 3 * HIDDEN, HIDDEN))),
                             const("B", rng.normal(scale=0.3, size=(1, 6 * HIDDEN)))], opset=14)
    (recurrent,) = [module for module in to_torch(model).modules() if isinstance(module, Recurrent)]
    assert not recurrent.prepared
    check(model, {"x": rng.normal(size=(FRAMES, 2, FEATURES)).astype(np.float32), "W": w}, family="recurrent",
          grad=("x", "W"), grad_tolerance=2e-2)
