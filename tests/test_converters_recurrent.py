"""LSTM, GRU and RNN one-node graphs against onnxruntime (outputs and input gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from onnxattack.bridge.convert import to_torch
from onnxattack.errors import ConversionError

from .converter_checks import check, const, model_of, session

SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 3
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _recurrent(kind: str, *, direction: str = "forward", initial: bool = False, layout: int = 0, opset: int = 14,
               outputs=("Y", "Y_h", "Y_c"), peepholes: bool = False, sequence_lens: str | None = None,
               seed: int = 0, **attributes):
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[kind] * HIDDEN
    initializers = [const("W", rng.normal(scale=0.5, size=(dirs, gates, INPUT))),
                    const("R", rng.normal(scale=0.5, size=(dirs, gates, HIDDEN))),
                    const("B", rng.normal(scale=0.3, size=(dirs, 2 * gates)))]
    x_shape = (BATCH, SEQ, INPUT) if layout else (SEQ, BATCH, INPUT)
    state_shape = (BATCH, dirs, HIDDEN) if layout else (dirs, BATCH, HIDDEN)
    inputs = [("x", TensorProto.FLOAT, list(x_shape))]
    feeds = {"x": rng.normal(size=x_shape).astype(np.float32)}
    names = ["x", "W", "R", "B", "", "", "", ""]
    if sequence_lens == "input":
        inputs.append(("lens", TensorProto.INT32, [BATCH]))
        feeds["lens"] = np.array([SEQ, 2, 4], dtype=np.int32)
        names[4] = "lens"
    elif sequence_lens == "constant":
        initializers.append(const("lens", [3, SEQ, 1], np.int32))
        names[4] = "lens"
    if initial:
        inputs.append(("h0", TensorProto.FLOAT, list(state_shape)))
        feeds["h0"] = rng.normal(scale=0.5, size=state_shape).astype(np.float32)
        names[5] = "h0"
        if kind == "LSTM":
            inputs.append(("c0", TensorProto.FLOAT, list(state_shape)))
            feeds["c0"] = rng.normal(scale=0.5, size=state_shape).astype(np.float32)
            names[6] = "c0"
    if peepholes:
        initializers.append(const("P", rng.normal(scale=0.5, size=(dirs, 3 * HIDDEN))))
        names[7] = "P"
    while names and not names[-1]:
        names.pop()
    outputs = [o for o in outputs if kind == "LSTM" or o != "Y_c"]
    if layout:
        attributes["layout"] = layout
    node = helper.make_node(kind, names, list(outputs), hidden_size=HIDDEN, direction=direction, **attributes)
    model = model_of([node], inputs, [o for o in outputs if o], initializers, opset=opset)
    return model, feeds


CASES = [
    ("rnn-forward", "RNN", {}),
    ("rnn-reverse-initial", "RNN", dict(direction="reverse", initial=True)),
    ("rnn-bidirectional-relu", "RNN", dict(direction="bidirectional", activations=["Relu", "Tanh"])),
    ("rnn-opset7", "RNN", dict(opset=7)),
    ("gru-forward", "GRU", {}),
    ("gru-linear-before-reset", "GRU", dict(linear_before_reset=1, initial=True)),
    ("gru-bidirectional", "GRU", dict(direction="bidirectional", initial=True)),
    ("gru-hardsigmoid-alpha-beta", "GRU", dict(activations=["HardSigmoid", "Tanh"], activation_alpha=[0.3],
                                                activation_beta=[0.4], grad_tolerance=0.05)),
    ("gru-opset22", "GRU", dict(opset=22, linear_before_reset=1)),
    ("lstm-forward", "LSTM", {}),
    ("lstm-reverse-initial", "LSTM", dict(direction="reverse", initial=True)),
    ("lstm-bidirectional-initial", "LSTM", dict(direction="bidirectional", initial=True)),
    ("lstm-peepholes", "LSTM", dict(peepholes=True, initial=True)),
    ("lstm-explicit-activations", "LSTM", dict(
        direction="bidirectional", activations=["Sigmoid", "LeakyRelu", "Softsign", "HardSigmoid", "Tanh", "Elu"],
        activation_alpha=[0.1, 0.25, 0.7], activation_beta=[0.45])),
    ("lstm-clip", "LSTM", dict(clip=0.8)),
    ("lstm-only-y-h", "LSTM", dict(outputs=("", "Y_h"))),
    ("lstm-only-y", "LSTM", dict(outputs=("Y",))),
    ("lstm-sequence-lens-input", "LSTM", dict(sequence_lens="input", direction="bidirectional")),
    ("gru-sequence-lens-constant", "GRU", dict(sequence_lens="constant", direction="reverse", initial=True)),
    ("lstm-opset7", "LSTM", dict(opset=7)),
]


@pytest.mark.parametrize("name,kind,options", CASES, ids=[c[0] for c in CASES])
def test_recurrent_matches_onnxruntime(name, kind, options):
    options = dict(options)
    tolerance = options.pop("grad_tolerance", 2e-2)  # wider where a piecewise-linear gate has kinks
    model, feeds = _recurrent(kind, **options)
    grad = tuple(n for n in ("x", "h0", "c0") if n in feeds)
    check(model, feeds, family="recurrent", grad=grad, atol=2e-5, rtol=1e-4, grad_tolerance=tolerance)


@pytest.mark.parametrize("kind,direction", [("GRU", "reverse"), ("LSTM", "bidirectional"), ("RNN", "forward")])
def test_layout_1_matches_onnxruntime_on_the_transposed_layout_0_graph(kind, direction):
    """onnxruntime refuses layout=1 (batch first): its layout-0 result, transposed, is the reference."""
    batch_first, feeds = _recurrent(kind, direction=direction, layout=1, initial=True)
    seq_first, _ = _recurrent(kind, direction=direction, layout=0, initial=True)
    swapped = {name: np.ascontiguousarray(np.swapaxes(value, 0, 1)) for name, value in feeds.items()}
    reference = session(seq_first).run(None, swapped)
    reference = [np.transpose(reference[0], (2, 0, 1, 3))] + [np.swapaxes(r, 0, 1) for r in reference[1:]]
    module = to_torch(batch_first)
    got = module(*(torch.from_numpy(feeds[v.name]) for v in batch_first.graph.input))
    assert len(got) == len(reference)
    for mine, theirs in zip(got, reference, strict=True):
        assert tuple(mine.shape) == theirs.shape
        np.testing.assert_allclose(mine.detach().numpy(), theirs, rtol=1e-4, atol=2e-5)


def test_input_forget_is_refused_by_name():
    model, _ = _recurrent("LSTM", input_forget=1)
    with pytest.raises(ConversionError, match="LSTM-14.*input_forget"):
        to_torch(model)


NATIVE_CASES = [
    ("RNN", dict(direction="reverse", initial=True)),
    ("RNN", dict(direction="bidirectional", activations=["Relu", "Relu"])),
    ("GRU", dict(linear_before_reset=1, direction="bidirectional", initial=True)),
    ("GRU", dict(linear_before_reset=1, layout=1, initial=True)),
    ("LSTM", dict(direction="reverse", initial=True)),
    ("LSTM", dict(direction="bidirectional", outputs=("Y", "Y_h", "Y_c"))),
    ("LSTM", dict(layout=1, initial=True)),
]


@pytest.mark.parametrize("kind,options", NATIVE_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(NATIVE_CASES)])
def test_torch_kernel_path_is_taken_and_matches_the_unrolled_recurrence(kind, options, monkeypatch):
    """Nodes whose equations are torch's run through torch.gru / lstm / rnn_*: same outputs and input
    gradients (float64) as the step-by-step loop, which stays for every other node."""
    from onnxattack.bridge.converters.recurrent import Recurrent

    model, feeds = _recurrent(kind, **options)
    names = [v.name for v in model.graph.input]

    def run() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        module = to_torch(model).double()
        tensors = [torch.from_numpy(feeds[n]).double().requires_grad_(True) for n in names]
        got = module(*tensors)
        got = list(got) if isinstance(got, (tuple, list)) else [got]
        weights = [torch.linspace(-1, 1, g.numel(), dtype=torch.float64).reshape(g.shape) for g in got]
        grads = torch.autograd.grad(sum((g * w).sum() for g, w in zip(got, weights, strict=True)), tensors)
        return [g.detach() for g in got], list(grads)

    taken: list[bool] = []
    original = Recurrent.native_kernel
    monkeypatch.setattr(Recurrent, "native_kernel",
                        lambda self, *a: taken.append(original(self, *a)) or taken[-1])
    native_out, native_grads = run()
    assert taken and all(taken)
    monkeypatch.setattr(Recurrent, "native_kernel", lambda self, *a: False)
    loop_out, loop_grads = run()
    for mine, theirs in zip([*native_out, *native_grads], [*loop_out, *loop_grads], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10)


def test_nodes_torch_does_not_compute_keep_the_loop():
    from onnxattack.bridge.converters.recurrent import Recurrent

    for kind, options in [("GRU", {}), ("LSTM", dict(peepholes=True)), ("LSTM", dict(clip=0.5)),
                          ("GRU", dict(linear_before_reset=1, sequence_lens="constant")),
                          ("RNN", dict(direction="bidirectional", activations=["Relu", "Tanh"]))]:
        model, feeds = _recurrent(kind, **options)
        module = to_torch(model)
        node = next(m for m in module.modules() if isinstance(m, Recurrent))
        w, r = (torch.from_numpy(onnx_numpy(model, n)) for n in ("W", "R"))
        lens = torch.ones(3) if "sequence_lens" in options else None
        p = torch.ones(3) if options.get("peepholes") else None
        assert not node.native_kernel(w, r, lens, p), (kind, options)


def onnx_numpy(model, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return next(numpy_helper.to_array(init).copy() for init in model.graph.initializer if init.name == name)
