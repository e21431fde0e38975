"""Conversion of real exports: fidelity to onnxruntime and input gradients that match it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onnxattack.errors import ConversionError, FidelityError
from onnxattack.loader import load

from . import exporters as ex

MATRIX = [
    # id, model factory, sample shape, exporter kwargs
    ("mlp-legacy-11", lambda: ex.MLP(head="sigmoid"), (12,), dict(dynamo=False, opset=11)),
    ("cnn-legacy-17-softmax", lambda: ex.CNN(head="softmax"), (1, 8, 8), dict(dynamo=False, opset=17)),
    ("mlp-dynamo-18", lambda: ex.MLP(), (12,), dict(dynamo=True, opset=18)),
    ("cnn-dynamo-18", lambda: ex.CNN(), (1, 8, 8), dict(dynamo=True, opset=18)),
    ("resnet-dynamo-20", ex.ResidualNet, (1, 8, 8), dict(dynamo=True, opset=20)),
    ("attention-dynamo-18", ex.Attention, (1, 4, 4), dict(dynamo=True, opset=18)),
    ("attention-dynamo-20", ex.Attention, (1, 4, 4), dict(dynamo=True, opset=20)),
    ("nhwc-preprocessing-dynamo-18", ex.NHWCPreprocessed, (8, 8, 3), dict(dynamo=True, opset=18)),
    ("cnn-fixed-batch-1", lambda: ex.CNN(), (1, 8, 8), dict(dynamo=False, opset=13, dynamic_batch=False)),
]


def _box(sample_shape) -> tuple[float, float]:
    return (0.0, 255.0) if sample_shape[-1] == 3 else (0.0, 1.0)


def assert_matches_onnxruntime(model, x: np.ndarray, directions: int = 3) -> None:
    """Scores within 1e-4; torch input gradients agree with onnxruntime finite differences."""
    x_t = model.as_tensor(x).requires_grad_(True)
    torch_scores = model.torch_scores(x_t)
    ort_scores = model.ort_scores(x)
    assert np.abs(torch_scores.detach().numpy() - ort_scores).max() <= 1e-4
    rng = np.random.default_rng(1)
    weights = rng.normal(size=ort_scores.shape).astype(np.float32)
    (gradient,) = torch.autograd.grad((torch_scores * torch.from_numpy(weights)).sum(), x_t)
    assert gradient.abs().sum() > 0
    scale = float(np.abs(x).max()) or 1.0
    errors = []
    for _ in range(directions):
        direction = rng.normal(size=x.shape)
        direction /= np.linalg.norm(direction)
        eps = 1e-2 * scale
        plus = model.ort_scores((x + eps * direction).astype(np.float32))
        minus = model.ort_scores((x - eps * direction).astype(np.float32))
        numeric = float(((plus - minus) * weights).sum() / (2 * eps))
        analytic = float((gradient.numpy() * direction).sum())
        errors.append(abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-3))
    assert np.median(errors) < 0.05, errors


@pytest.mark.parametrize("name,factory,sample_shape,kwargs", MATRIX, ids=[m[0] for m in MATRIX])
def test_exports_convert_faithfully(tmp_path: Path, name, factory, sample_shape, kwargs):
    torch.manual_seed(0)
    net = factory().eval()
    box = _box(sample_shape)
    sample = torch.rand(1 if kwargs.get("dynamic_batch") is False else 2, *sample_shape) * box[1]
    path = ex.export_torch(net, sample, tmp_path / f"{name}.onnx", **kwargs)
    model = load(path, device="cpu", box=box)
    assert model.fidelity is not None and model.fidelity <= 1e-4
    x = np.random.default_rng(0).uniform(*box, size=(5, *sample_shape)).astype(np.float32)
    assert_matches_onnxruntime(model, x)
    with torch.no_grad():
        reference = net(torch.from_numpy(x)).numpy()
    assert np.abs(model.ort_scores(x) - reference).max() <= 1e-4  # the export itself is right
    if kwargs.get("dynamic_batch") is False:
        assert any("baked" in note for note in model.notes)


def test_activation_is_cut_to_logits_and_read_back(tmp_path):
    path = ex.export_torch(ex.MLP(head="sigmoid"), torch.rand(2, 12), tmp_path / "p.onnx", dynamo=True, opset=18)
    model = load(path, device="cpu")
    assert model.reader.head == "sigmoid" and model.reader.attack_threshold == 0.0
    x = torch.rand(4, 12)
    logits = model.attack_logits(x)
    assert torch.allclose(torch.sigmoid(logits), model.torch_scores(x))
    assert (logits.abs() > 0).all()  # the logits, not probabilities clamped to (0, 1)


def test_two_outputs_pick_the_named_one(tmp_path):
    path = ex.export_torch(ex.TwoOutputs(), torch.rand(2, 12), tmp_path / "two.onnx", dynamo=False, opset=17,
                           output_names=["aux", "probs"])
    model = load(path, device="cpu", output="probs")
    assert model.num_labels == 5 and model.reader.head == "sigmoid"
    assert_matches_onnxruntime(model, np.random.default_rng(0).random((4, 12), dtype=np.float32))


def test_constant_node_weights_convert(tmp_path):
    source = ex.export_torch(ex.CNN(), torch.rand(2, 1, 8, 8), tmp_path / "cnn.onnx", dynamo=False, opset=13)
    path = ex.with_constant_node_weights(source, tmp_path / "paddle_like.onnx")
    model = load(path, device="cpu")
    assert_matches_onnxruntime(model, np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32))


def test_sklearn_mlp_converts_once_its_label_branch_is_cut(tmp_path):
    path, x = ex.sklearn_mlp(tmp_path / "skl.onnx")
    model = load(path, device="cpu", output="probabilities")
    assert model.reader.head == "sigmoid"
    assert_matches_onnxruntime(model, x[:8])


def test_batch_baked_into_the_graph_runs_one_sample_at_a_time(tmp_path):
    path = ex.fixed_batch_reshape_model(tmp_path / "fixed.onnx")
    model = load(path, device="cpu")
    assert any("1 sample(s) at a time" in note for note in model.notes)
    x = np.random.default_rng(0).random((5, 2, 3), dtype=np.float32)
    assert model.ort_scores(x).shape == (5, 4)
    assert_matches_onnxruntime(model, x)


def test_a_renamed_batch_that_merges_rows_falls_back_to_one_sample_at_a_time(tmp_path):
    path = ex.batch_merging_model(tmp_path / "merging.onnx")
    model = load(path, device="cpu")
    assert any("torch graph also runs 1 sample(s) at a time" in note for note in model.notes)
    x = np.random.default_rng(0).random((5, 2, 3), dtype=np.float32)
    assert model.torch_scores(torch.from_numpy(x)).shape == (5, 4)
    assert_matches_onnxruntime(model, x)


def test_unconvertible_graph_names_every_blocking_op(tmp_path):
    path = ex.unconvertible_model(tmp_path / "ml.onnx")
    with pytest.raises(ConversionError) as caught:
        load(path, device="cpu")
    assert caught.value.blocking_ops == ["Hardmax-13", "ai.onnx.ml.Binarizer-1"]
    assert "Hardmax-13" in str(caught.value) and "ai.onnx.ml.Binarizer-1" in str(caught.value)


def test_fidelity_check_refuses_a_graph_beyond_tolerance(tmp_path):
    path = ex.export_torch(ex.CNN(), torch.rand(2, 1, 8, 8), tmp_path / "cnn.onnx", dynamo=False, opset=17)
    model = load(path, device="cpu")
    assert model.fidelity > 0
    with pytest.raises(FidelityError, match="max score difference .* > tolerance"):
        load(path, device="cpu", tolerance=model.fidelity / 10)
