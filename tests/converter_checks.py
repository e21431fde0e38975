"""One-node (or small) ONNX graphs checked against onnxruntime: outputs and input gradients.

Gradients: torch autograd (float64 by default) of a random weighting of the outputs, against
onnxruntime central finite differences along a few random directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper

from onnxattack.bridge.convert import to_torch

# Largest differences seen by the checks in this process, per family: (forward, gradient).
MEASURED: dict[str, list[float]] = {}


def model_of(nodes: Sequence[onnx.NodeProto], inputs: Sequence[tuple[str, int, Sequence | None]],
             outputs: Sequence[str], initializers: Sequence[onnx.TensorProto] = (), opset: int = 17,
             ml_opset: int | None = None, output_types: dict[str, int] | None = None) -> onnx.ModelProto:
    """A graph of `nodes`; inputs as (name, TensorProto element type, shape or None); float outputs
    unless `output_types` says otherwise."""
    output_types = output_types or {}
    opsets = [helper.make_opsetid("", opset)]
    if ml_opset is not None:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ml_opset))
    graph = helper.make_graph(
        list(nodes), "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(name, output_types.get(name, onnx.TensorProto.FLOAT), None) for name in outputs],
        list(initializers))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = min(model.ir_version, 10)
    return model


def const(name: str, values, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def session(model: onnx.ModelProto, optimise: bool = True, level: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimise or level:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level or "ORT_DISABLE_ALL")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _as_list(value) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, family: str, grad: Sequence[str] = ("x",),
          atol: float = 1e-5, rtol: float = 1e-5, grad_tolerance: float = 1e-2, eps: float = 1e-3,
          directions: int = 3, double: bool = True, seed: int = 0) -> tuple[float, float]:
    """Outputs within atol + rtol*|ref| of onnxruntime, and directional derivatives within
    `grad_tolerance` (relative) of onnxruntime's central differences. Returns the max
    forward difference and the max relative gradient error."""
    sess = session(model)
    names = [value.name for value in model.graph.input]
    expected = sess.run(None, feeds)
    module = to_torch(model)
    dtype = torch.float64 if double else torch.float32
    if double:
        module = module.double()
    tensors = []
    for name in names:
        array = feeds[name]
        tensor = torch.from_numpy(array)
        if array.dtype.kind == "f":
            tensor = tensor.to(dtype).requires_grad_(name in grad)
        tensors.append(tensor)
    got = _as_list(module(*tensors))
    assert len(got) == len(expected)
    worst = 0.0
    for mine, theirs in zip(got, expected, strict=True):
        assert tuple(mine.shape) == theirs.shape, (tuple(mine.shape), theirs.shape)
        mine_np = mine.detach().numpy().astype(np.float64)
        np.testing.assert_allclose(mine_np, theirs.astype(np.float64), rtol=rtol, atol=atol)
        if theirs.size:
            worst = max(worst, float(np.abs(mine_np - theirs).max()))
    grad_error = 0.0
    if grad:
        grad_error = _check_gradient(sess, module, names, tensors, feeds, got, expected, grad, eps, directions,
                                     grad_tolerance, seed)
    record(family, worst, grad_error)
    return worst, grad_error


def _check_gradient(sess, module, names, tensors, feeds, got, expected, grad, eps, directions, tolerance,
                    seed) -> float:
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=e.shape) for e in expected]
    objective = sum((g * torch.from_numpy(w).to(g.dtype)).sum() for g, w in zip(got, weights, strict=True)
                    if g.dtype.is_floating_point)
    wrt = [tensors[names.index(name)] for name in grad]
    gradients = torch.autograd.grad(objective, wrt)
    assert any(float(g.abs().sum()) > 0 for g in gradients), "the gradient is zero everywhere"
    errors = []
    for _ in range(directions):
        steps = {name: rng.normal(size=feeds[name].shape) for name in grad}
        norm = np.sqrt(sum(float((s ** 2).sum()) for s in steps.values()))
        plus, minus = dict(feeds), dict(feeds)
        for name in grad:
            plus[name] = (feeds[name] + eps * steps[name] / norm).astype(feeds[name].dtype)
            minus[name] = (feeds[name] - eps * steps[name] / norm).astype(feeds[name].dtype)
        up, down = sess.run(None, plus), sess.run(None, minus)
        numeric = sum(float(((u.astype(np.float64) - d) * w).sum()) for u, d, w in zip(up, down, weights, strict=True)
                      if u.dtype.kind == "f") / (2 * eps)
        analytic = sum(float((g.detach().numpy() * steps[name] / norm).sum())
                       for g, name in zip(gradients, grad, strict=True))
        errors.append(abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-2))
    assert max(errors) < tolerance, errors
    return max(errors)


def record(family: str, forward: float, gradient: float) -> None:
    seen = MEASURED.setdefault(family, [0.0, 0.0])
    seen[0] = max(seen[0], forward)
    seen[1] = max(seen[1], gradient)
