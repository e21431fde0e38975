"""Time-major scores [T, N, L] (CTC recognisers: ddddocr's OCR, PaddleOCR's recognition, speech models):
the batch dim is found (inferred, or --batch-axis), the frames are folded, and --ctc reads them as
"which symbols appear". Success is recomputed here from onnxruntime on the stored x_adv."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main
from torch import nn

FRAMES, SYMBOLS = 6, 7


class TinyRecogniser(nn.Module):
    """A [N, 1, 8, 24] strip -> per-frame symbol logits, time-major [T, N, L], as CTC recognisers emit."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 4, SYMBOLS)

    def forward(self, x):
        h = torch.tanh(self.conv(x))  # [N, 8, 8, 24]
        frames = h.unfold(3, 4, 4)  # [N, 8, 8, T, 4]
        frames = frames.permute(0, 3, 1, 2, 4).reshape(x.shape[0], FRAMES, -1)
        return (10 * self.head(frames)).permute(1, 0, 2)  # [T, N, L]


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctc")
    path = folder / "rec.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TinyRecogniser().eval(), (torch.rand(2, 1, 8, 24),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {1: "batch"}})
    np.save(folder / "x.npy", np.random.default_rng(0).uniform(0, 1, (8, 1, 8, 24)).astype(np.float32))
    return path, folder / "x.npy"


def appear(path, x: np.ndarray) -> np.ndarray:
    """Which symbols appear, from onnxruntime: some frame's log-probability of the symbol exceeds log 0.5."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = session.run(None, {"image": x})[0].transpose(1, 0, 2).astype(np.float64)  # [N, T, L]
    log_probs = frames - np.log(np.exp(frames).sum(axis=-1, keepdims=True))
    return log_probs.max(axis=1) > np.log(0.5)


@pytest.mark.parametrize("axis", [[], ["--batch-axis", "logits=1"]])
def test_a_time_major_recogniser_is_attacked_on_the_symbols_that_appear(recogniser, tmp_path, axis):
    path, inputs = recogniser
    out = tmp_path / "r.h5"
    result = CliRunner().invoke(main, ["attack", str(path), str(inputs), "-o", str(out), "--ctc", *axis,
                                       "--method", "ml-deepfool", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    notes = " ".join(json.loads(result.stdout)["notes"])
    assert ("time-major: its batch is dim 1" in notes) == (not axis)
    with h5py.File(out, "r") as handle:
        reached = (appear(path, handle["x_adv"][:]) == handle["y_target"][:].astype(bool)).all(axis=1)
        attacked = handle["attacked"][:]
        assert np.array_equal(reached & attacked, handle["success"][:])
        assert np.array_equal(appear(path, handle["x"][:]), handle["y_pred"][:].astype(bool))
    assert reached[attacked].mean() >= 0.8


def test_without_a_batch_dim_to_find_the_refusal_names_the_flag(recogniser, tmp_path):
    path, inputs = recogniser
    result = CliRunner().invoke(main, ["attack", str(path), str(inputs), "-o", str(tmp_path / "r.h5"),
                                       "--batch-axis", "image=1"])
    assert result.exit_code == 2 and "only the score output's batch dim" in result.output
