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


def with_metadata(path, target, **metadata: str):
    """A copy of the model with metadata entries (a charset as `labels`, the blank's index)."""
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
    return target


def greedy(path, x: np.ndarray, blank: int, names: list[str] | None) -> list[str]:
    """Greedy CTC decoding written out here: onnxruntime's best symbol per frame, runs merged, blanks dropped."""
    import itertools

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    best = session.run(None, {"image": x})[0].transpose(1, 0, 2).argmax(axis=-1)  # [N, T]
    texts = []
    for row in best:
        symbols = [int(symbol) for symbol, _ in itertools.groupby(row) if symbol != blank]
        texts.append("".join(names[s] for s in symbols) if names else " ".join(map(str, symbols)))
    return texts


CHARSET = ["", "a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize("case", ["metadata", "given", "default"])
def test_ctc_runs_store_the_greedy_decodes_before_and_after(recogniser, tmp_path, case):
    path, inputs = recogniser
    flags: list[str] = []
    if case == "metadata":  # the charset and the blank's index from the model's metadata
        path = with_metadata(path, tmp_path / "rec.onnx", labels=json.dumps(CHARSET), ctc_blank="0")
        blank, source, names = 0, "metadata ctc_blank", CHARSET
    elif case == "given":
        flags, blank, source, names = ["--ctc-blank", "3"], 3, "given", None
    else:
        blank, source, names = 0, "default", None
    out = tmp_path / "r.h5"
    result = CliRunner().invoke(main, ["attack", str(path), str(inputs), "-o", str(out), "--ctc", *flags,
                                       "--method", "ml-deepfool", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    decoded = json.loads(result.stdout)["decoded"]
    assert (decoded["blank"], decoded["blank_source"]) == (blank, source)
    with h5py.File(out, "r") as handle:
        before = [text.decode() for text in handle["decoded/x"][:]]
        after = [text.decode() for text in handle["decoded/x_adv"][:]]
        assert before == greedy(path, handle["x"][:], blank, names)
        assert after == greedy(path, handle["x_adv"][:], blank, names)
        assert handle["decoded"].attrs["blank"] == blank
    assert before != after  # the attack changed what is read
    shown = decoded["examples"]
    assert shown and all(example["x"] == before[example["row"]] and example["x_adv"] == after[example["row"]]
                         for example in shown)
    assert shown[0]["x"] != shown[0]["x_adv"]  # changed rows are shown first


def test_the_decoded_strings_are_printed_in_the_summary(recogniser, tmp_path):
    path, inputs = recogniser
    path = with_metadata(path, tmp_path / "rec.onnx", labels=json.dumps(CHARSET))
    result = CliRunner().invoke(main, ["attack", str(path), str(inputs), "-o", str(tmp_path / "r.h5"), "--ctc",
                                       "--method", "ml-deepfool", "--quiet", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "decoded (greedy CTC, blank 0: default;" in result.output
    assert "row 0: '" in result.output


def test_a_blank_index_outside_the_symbols_is_refused(recogniser, tmp_path):
    path, inputs = recogniser
    result = CliRunner().invoke(main, ["attack", str(path), str(inputs), "-o", str(tmp_path / "r.h5"), "--ctc",
                                       "--ctc-blank", str(SYMBOLS), "--method", "ml-deepfool", "--limit", "2"])
    assert result.exit_code == 2 and "blank index 7 (given) is not one of the 7 symbols" in result.output
