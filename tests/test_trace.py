"""The converted graph run as a checked TorchScript trace (onnxattack/bridge/trace.py): same scores and
input gradients as the untraced graph at every batch size, and the untraced graph kept whenever a
trace would differ, fails, or does not pay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from onnxattack import MLCarliniWagner, attack_arrays, load
from onnxattack.bridge.trace import TracedGraph, bucket, traceable
from onnxattack.scores import ThresholdCriterion

from . import exporters as ex
from .converter_checks import model_of


@pytest.fixture(scope="module")
def attention_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("trace") / "attention.onnx"
    torch.manual_seed(0)
    return str(ex.export_torch(nn.Sequential(ex.Attention(), nn.Sigmoid()), torch.rand(2, 1, 4, 4), path,
                               dynamo=False, opset=17))


def _scores_and_gradient(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_(True)
    z = fn(leaf)
    weights = torch.linspace(-1, 1, z.numel()).reshape(z.shape)
    (grad,) = torch.autograd.grad((z * weights).sum(), leaf)
    return z.detach(), grad


def test_buckets() -> None:
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 6, 7, 9, 13, 17, 25, 32, 33)] == \
        [1, 2, 3, 4, 6, 6, 8, 12, 16, 24, 32, 32, 48]


def test_traced_attention_graph_matches_the_untraced_one_at_every_batch_size(attention_model) -> None:
    model = load(attention_model, device="cpu", trace=False)
    graph = model.graph
    traced = TracedGraph(graph, min_saving=-1.0)  # always pays: the rule's timing is not what is tested here
    rng = np.random.default_rng(0)
    for rows in (32, 31, 7, 5, 1, 24):
        x = torch.as_tensor(rng.uniform(0, 1, size=(rows, 1, 4, 4)), dtype=torch.float32)
        mine, mine_grad = _scores_and_gradient(traced, x)
        theirs, theirs_grad = _scores_and_gradient(graph, x)
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine_grad, theirs_grad, rtol=1e-4, atol=1e-6)
    assert traced.status == "traced"
    assert sorted(key[0] for key in traced.traces) == [1, 6, 8, 24, 32]


def test_a_loaded_model_is_attacked_the_same_through_the_trace(attention_model) -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(6, 1, 4, 4)).astype(np.float32)
    results = []
    for trace in (False, True):
        model = load(attention_model, device="cpu", trace=trace)
        if trace:
            model.source.graph.min_saving = -1.0  # type: ignore[union-attr]
        result = attack_arrays(model, x, MLCarliniWagner(max_iter=20, binary_steps=2), target="hide-single",
                               criterion=ThresholdCriterion(0.5))
        results.append(result)
        if trace:
            assert model.graph.status == "traced"  # type: ignore[union-attr]
    plain, traced = results
    np.testing.assert_array_equal(traced.success, plain.success)
    np.testing.assert_allclose(traced.x_adv, plain.x_adv, atol=1e-4)


class _DataDependent(nn.Module):
    """Python control flow on the values: a trace records one branch only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return flat * 2 if bool(flat[0, 0] > 0.5) else flat * -3


class _Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError("no tracing here")
        return x.flatten(1)


def test_a_trace_that_differs_leaves_the_untraced_graph_in_charge() -> None:
    x = torch.linspace(0.4, 0.9, 8).reshape(8, 1)  # first row below 0.5; the check's second batch is above
    traced = TracedGraph(_DataDependent(), min_saving=-1.0)
    out = traced(x)
    assert traced.status.startswith("untraced: the trace differs") and not traced.traces
    torch.testing.assert_close(out, _DataDependent()(x))


def test_a_graph_the_tracer_cannot_record_stays_untraced() -> None:
    traced = TracedGraph(_Untraceable(), min_saving=-1.0)
    x = torch.rand(4, 3)
    torch.testing.assert_close(traced(x), x)
    assert traced.status == "untraced: tracing failed (RuntimeError)"


def test_a_trace_that_does_not_pay_is_dropped() -> None:
    traced = TracedGraph(nn.Linear(3, 2), min_saving=1.0)  # nothing can save 100%
    x = torch.rand(4, 3)
    traced(x)
    assert traced.status.startswith("untraced: the trace did not pay") and not traced.enabled


def test_control_flow_graphs_are_never_traced() -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y1"])], "b", [],
                               [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    model = model_of([node], [("c", TensorProto.BOOL, []), ("x", TensorProto.FLOAT, [1])], ["y"])
    assert not traceable(model)
    assert traceable(model_of([helper.make_node("Relu", ["x"], ["y"])], [("x", TensorProto.FLOAT, [1])], ["y"]))


def test_a_trace_that_does_not_pay_is_timed_but_never_checked(attention_model) -> None:
    """The probe times first and stops there: the checks (two more batches through both graphs) are only
    paid for a trace that will be kept."""
    graph = load(attention_model, device="cpu", trace=False).graph
    calls = []
    graph.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    traced = TracedGraph(graph, min_saving=1.0)  # a trace would have to cost nothing: it never pays
    x = torch.rand(3, 1, 4, 4)
    z = traced(x)
    assert traced.status.startswith("untraced: the trace did not pay")
    torch.testing.assert_close(z, graph(x))
    # tracing runs the graph twice, then at most five timed passes and the untraced answer (checking the
    # trace first ran the graph four more times)
    assert 3 <= len(calls) <= 2 + 5 + 1
