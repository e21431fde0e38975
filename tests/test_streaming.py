"""Inputs of any shape and streaming models with state, exported with torch's exporter as third parties do.

- A model whose other inputs have no leading batch dim: a scalar sample rate (`--set sr=16000`), a table
  given once (`--broadcast`), a state [2, N, H] whose batch is dim 1 (found by its dim name, or
  `--batch-axis state=1`).
- A streaming model (a GRU cell over chunks, state [layers, N, H], scalar sr): each row is a whole
  sequence, run chunk by chunk with the state carried (`--state stateN=state`).
- silero-vad's own ONNX model, from its pip package, when it is installed.

Success is recomputed here from onnxruntime: the chunk loop is run again in this file, fed from the
result file alone."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from .test_multi_input import run  # one CLI runner: exit code and output, internal errors raised

FEATURES, HIDDEN, LABELS = 6, 8, 4
CHUNK, STATE = 16, 12


class WithStateAndRate(nn.Module):
    """x [N, 6] + state [2, N, 8] (batch in dim 1) + sr int64 scalar + table [6] -> logits [N, 4]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(FEATURES, HIDDEN)
        self.head = nn.Linear(HIDDEN, LABELS)

    def forward(self, x, state, sr, table):
        rate = sr.to(torch.float32) / 16000.0
        h = torch.tanh(4 * self.body(x * table * rate) + state.sum(dim=0))
        return 3 * self.head(h)


def export_any_shape(path: Path, batch_name: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithStateAndRate().eval(),
                          (torch.rand(2, FEATURES), torch.zeros(2, 2, HIDDEN), torch.tensor(16000),
                           torch.ones(FEATURES)),
                          str(path), dynamo=False, opset_version=17, input_names=["x", "state", "sr", "table"],
                          output_names=["scores"],
                          dynamic_axes={"x": {0: "batch"}, "state": {1: batch_name}, "scores": {0: "batch"}})
    return path


class StreamingDetector(nn.Module):
    """A chunk [N, 16] + state [1, N, 12] + sr int64 scalar -> probabilities [N, 2] + the next state: a GRU
    over the chunk's 4 frames of 4 samples, as streaming detectors (silero-vad) are built."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.gru = nn.GRU(4, STATE, batch_first=True)
        self.head = nn.Linear(STATE, 2)

    def forward(self, chunk, state, sr):
        frames = chunk.reshape(chunk.shape[0], -1, 4) * (sr.to(torch.float32) / 16000.0)
        out, next_state = self.gru(5 * frames, state)
        return torch.sigmoid(4 * self.head(out[:, -1])), next_state


@pytest.fixture(scope="module")
def any_shape(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("anyshape")
    rng = np.random.default_rng(0)
    arrays = {"x": rng.uniform(0, 1, (8, FEATURES)).astype(np.float32),
              "state": rng.normal(0, 0.3, (2, 8, HIDDEN)).astype(np.float32),  # the model's layout: batch in dim 1
              "table": rng.uniform(0.5, 1.5, FEATURES).astype(np.float32)}
    np.savez(folder / "inputs.npz", **arrays)
    return folder, arrays


def rescored(model: Path, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(onnxruntime's verdict from the file alone, the stored success, the stored state rows)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        state = handle["inputs/state"][:]  # stored batch-first
        given = {name: np.asarray(handle[f"given/{name}"][()]) for name in handle["given"]}  # given once
        scores = session.run(None, {"x": handle["x_adv"][:], "state": np.moveaxis(state, 0, 1), **given})[0]
        reached = ((scores > 0) == handle["y_target"][:].astype(bool)).all(axis=1) & handle["attacked"][:]
        return reached, handle["success"][:], state


@pytest.mark.parametrize("batch_name,flags", [("batch", []), ("n", ["--batch-axis", "state=1"])],
                         ids=["inferred", "named"])
def test_scalar_set_table_broadcast_and_state_with_its_batch_in_dim_1(any_shape, batch_name, flags):
    folder, arrays = any_shape
    model = export_any_shape(folder / f"m_{batch_name}.onnx", batch_name)
    out = folder / f"r_{batch_name}.h5"
    code, output = run("attack", str(model), str(folder / "inputs.npz"), "-o", str(out), "--quiet", "--json",
                       "--overwrite", "--attack-input", "x", "--set", "sr=16000", "--broadcast", "table",
                       "--method", "ml-deepfool", "--max-iter", "200", *flags)
    assert code == 0, output
    summary = json.loads(output)
    assert summary["success_rate"] >= 0.8
    assert any("sr, table given once" in note for note in summary["notes"])
    assert any("batch in dim 1" in note for note in summary["notes"]) == (not flags)
    reached, stored, state = rescored(model, out)
    assert np.array_equal(reached, stored)
    assert np.array_equal(state, np.moveaxis(arrays["state"], 1, 0))  # each row's own state, unchanged
    with h5py.File(out, "r") as handle:
        assert handle["given/sr"][()] == 16000 and handle["given/sr"].dtype == np.int64
        assert np.array_equal(handle["given/table"][:], arrays["table"])
    code, output = run("validate", str(out), "--model", str(model), "--json")  # fed from the file alone
    assert code == 0, output
    with h5py.File(out, "r") as handle:
        assert np.array_equal(handle[f"transfer/{model.stem}/success"][:], stored)


def test_shards_merge_keeps_the_values_given_once_and_the_state_rows(any_shape):
    folder, arrays = any_shape
    model = export_any_shape(folder / "m_shards.onnx", "batch")
    shards = [folder / f"shard{index}.h5" for index in range(2)]
    for index, shard in enumerate(shards):
        code, output = run("attack", str(model), str(folder / "inputs.npz"), "-o", str(shard), "--quiet",
                           "--attack-input", "x", "--set", "sr=16000", "--broadcast", "table", "--batch-size", "4",
                           "--method", "ml-deepfool", "--max-iter", "5", "--shard", f"{index}/2")
        assert code == 0, output
    code, output = run("merge", *map(str, shards), "-o", str(folder / "merged.h5"))
    assert code == 0, output
    reached, stored, state = rescored(model, folder / "merged.h5")  # given/ and inputs/ of the merged file
    assert np.array_equal(reached, stored)
    assert np.array_equal(state, np.moveaxis(arrays["state"], 1, 0))


def test_the_value_given_once_is_the_one_used(any_shape):
    """sr scales the input: the stored clean scores are onnxruntime's with sr=8000, not a default."""
    folder, arrays = any_shape
    model = export_any_shape(folder / "m_rate.onnx", "batch")
    out = folder / "r_rate.h5"
    code, output = run("attack", str(model), str(folder / "inputs.npz"), "-o", str(out), "--quiet", "--json",
                       "--attack-input", "x", "--set", "sr=8000", "--broadcast", "table", "--limit", "3",
                       "--method", "ml-deepfool", "--max-iter", "2")
    assert code == 0, output
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": arrays["x"][:3], "state": arrays["state"][:, :3], "sr": np.array(8000),
                                  "table": arrays["table"]})[0]
    with h5py.File(out, "r") as handle:
        np.testing.assert_allclose(handle["scores"][:], expected, atol=1e-6)


@pytest.mark.parametrize("flags,message", [
    ([], "input 'sr' is a scalar (no batch dim): give it once with --set sr=VALUE"),
    (["--set", "sr=16000.5"], "--set sr: the model's input 'sr' takes int64, the values are not whole numbers"),
    (["--set", "sr=__import__('os')"], "not a number or a JSON list of numbers"),
    (["--set", "sr=16000", "--broadcast", "missing"], "has no array 'missing'"),
    (["--set", "rate=16000"], "--set rate: the model has no input 'rate'"),
    (["--set", "sr=[16000]"], "--set sr has shape [1], the model's input 'sr' takes []"),
], ids=["scalar-without-set", "not-whole", "code", "no-array", "no-input", "wrong-shape"])
def test_inputs_given_wrongly_are_refused_in_one_line(any_shape, flags, message):
    folder, _ = any_shape
    model = export_any_shape(folder / "m_refusals.onnx", "batch")
    code, output = run("attack", str(model), str(folder / "inputs.npz"), "-o", str(folder / "refused.h5"),
                       "--attack-input", "x", *(["--broadcast", "table"] if "--broadcast" not in flags else []),
                       *flags)
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert not (folder / "refused.h5").exists()


class WithRateOnly(nn.Module):
    """x [N, 6] + sr int64 scalar -> logits [N, 4]: the only other input is given once."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.body = nn.Linear(FEATURES, LABELS)

    def forward(self, x, sr):
        return 6 * self.body(x * (sr.to(torch.float32) / 16000.0) - 0.5)


def test_a_model_whose_only_other_input_is_given_once_converts_and_is_attacked(any_shape):
    folder, arrays = any_shape
    path = folder / "rate_only.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(WithRateOnly().eval(), (torch.rand(2, FEATURES), torch.tensor(16000)), str(path),
                          dynamo=False, opset_version=17, input_names=["x", "sr"], output_names=["scores"],
                          dynamic_axes={"x": {0: "batch"}, "scores": {0: "batch"}})
    np.save(folder / "x.npy", arrays["x"])
    out = folder / "rate_only.h5"
    code, output = run("attack", str(path), str(folder / "x.npy"), "-o", str(out), "--quiet", "--json",
                       "--set", "sr=16000", "--method", "ml-deepfool", "--max-iter", "200")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["gradients"] == "torch" and summary["success_rate"] >= 0.8
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        assert "inputs" not in handle  # nothing per row to store besides x
        scores = session.run(None, {"x": handle["x_adv"][:], "sr": np.array(16000)})[0]
        reached = ((scores > 0) == handle["y_target"][:].astype(bool)).all(axis=1) & handle["attacked"][:]
        assert np.array_equal(reached, handle["success"][:])


@pytest.fixture(scope="module")
def streaming(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("streaming")
    path = folder / "detector.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(StreamingDetector().eval(), (torch.rand(2, CHUNK), torch.zeros(1, 2, STATE),
                                                       torch.tensor(16000)),
                          str(path), dynamo=False, opset_version=17, input_names=["chunk", "state", "sr"],
                          output_names=["probs", "stateN"],
                          dynamic_axes={"chunk": {0: "batch"}, "state": {1: "batch"}, "probs": {0: "batch"},
                                        "stateN": {1: "batch"}})
    x = np.random.default_rng(2).uniform(-1, 1, (6, 4 * CHUNK)).astype(np.float32)  # 6 sequences of 4 chunks
    np.save(folder / "audio.npy", x)
    return path, folder / "audio.npy", x


def chunk_loop(path: Path, x: np.ndarray, sr: int = 16000) -> np.ndarray:
    """onnxruntime over the chunks, the state carried from zeros: per-chunk probabilities [N, chunks, 2]."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = np.zeros((1, len(x), STATE), dtype=np.float32)
    scores = []
    for start in range(0, x.shape[1], CHUNK):
        probs, state = session.run(None, {"chunk": x[:, start:start + CHUNK], "state": state, "sr": np.array(sr)})
        scores.append(probs)
    return np.stack(scores, axis=1)


def attack_stream(path: Path, inputs: Path, out: Path, *flags: str) -> dict:
    code, output = run("attack", str(path), str(inputs), "-o", str(out), "--quiet", "--json", "--overwrite",
                       "--state", "stateN=state", "--set", "sr=16000", "--range", "-1", "1", *flags)
    assert code == 0, output
    return json.loads(output)


@pytest.mark.parametrize("flags", [["--target", "random"], ["--target", "random", "--seed", "3", "--reduce", "mean"]],
                         ids=["max", "mean"])
def test_a_streaming_model_is_attacked_over_the_whole_sequence(streaming, tmp_path, flags):
    path, inputs, x = streaming
    summary = attack_stream(path, inputs, tmp_path / "r.h5", "--method", "ml-deepfool", *flags)
    assert summary["gradients"] == "torch"
    assert any("run in chunks of 16 with stateN -> state carried" in note for note in summary["notes"])
    fold = np.mean if "mean" in flags else np.max
    with h5py.File(tmp_path / "r.h5", "r") as handle:
        assert handle["x"].shape == x.shape  # a row is the whole sequence
        clean = fold(chunk_loop(path, handle["x"][:]), axis=1)
        adv = fold(chunk_loop(path, handle["x_adv"][:]), axis=1)
        np.testing.assert_allclose(handle["scores"][:], clean, atol=1e-5)
        np.testing.assert_allclose(handle["scores_adv"][:], adv, atol=1e-5)
        reached = ((adv > 0.5) == handle["y_target"][:].astype(bool)).all(axis=1) & handle["attacked"][:]
        assert np.array_equal(reached, handle["success"][:])
        assert handle["attacked"][:].sum() >= 3
    assert summary["success_rate"] >= 0.8


def test_per_chunk_labels_and_estimated_gradients_over_the_chunk_loop(streaming, tmp_path):
    """--per-chunk: a label per (chunk, label); --gradients estimate: the onnxruntime loop is queried."""
    path, inputs, _ = streaming
    out = tmp_path / "r.h5"
    summary = attack_stream(path, inputs, out, "--per-chunk", "--gradients", "estimate", "--method", "ml-deepfool",
                            "--target", "+1@3", "--limit", "3", "--max-queries", "3000")
    assert summary["gradients"] == "estimated"
    with h5py.File(out, "r") as handle:
        assert json.loads(handle.attrs["labels"]) == [f"{label}@{chunk}" for chunk in range(4) for label in (0, 1)]
        adv = chunk_loop(path, handle["x_adv"][:]).reshape(3, -1)
        np.testing.assert_allclose(handle["scores_adv"][:], adv, atol=1e-5)
        reached = ((adv > 0.5) == handle["y_target"][:].astype(bool)).all(axis=1) & handle["attacked"][:]
        assert np.array_equal(reached, handle["success"][:])
        assert handle["queries"][:][handle["attacked"][:]].min() > 0
    assert summary["successes"] >= 1


@pytest.mark.parametrize("flags,message", [
    (["--state", "stateX=state", "--set", "sr=16000"], "--state stateX=state: the model has no output 'stateX'"),
    (["--state", "stateN=state", "--set", "sr=16000", "--chunk", "12"], "--chunk 12: input 'chunk' takes chunks of 16"),
    (["--state", "stateN=state", "--set", "sr=16000", "--chunk", "16"], None),
    (["--state", "stateN=state"], "input 'sr' is a scalar"),
    (["--state", "stateN=state", "--set", "sr=16000", "--context", "16"], "--context 16: must be less than the chunk"),
    (["--set", "sr=16000", "--context", "4"], "applies to streaming models only (--state OUT=IN)"),
], ids=["no-output", "wrong-chunk", "chunk-fits", "scalar-missing", "context-too-long", "context-alone"])
def test_streaming_refusals(streaming, tmp_path, flags, message):
    path, inputs, _ = streaming
    if message is None:  # the declared chunk length, repeated, is accepted
        code, output = run("attack", str(path), str(inputs), "-o", str(tmp_path / "ok.h5"), "--range", "-1", "1",
                           "--limit", "1", "--max-iter", "1", *flags)
        assert code == 0, output
        return
    code, output = run("attack", str(path), str(inputs), "-o", str(tmp_path / "r.h5"), "--range", "-1", "1", *flags)
    assert code == 2, output
    assert message in output


def test_a_sequence_that_is_not_whole_chunks_is_refused(streaming, tmp_path):
    path, _, x = streaming
    np.save(tmp_path / "ragged.npy", x[:, : 3 * CHUNK + 5])
    code, output = run("attack", str(path), str(tmp_path / "ragged.npy"), "-o", str(tmp_path / "r.h5"),
                       "--state", "stateN=state", "--set", "sr=16000", "--range", "-1", "1")
    assert code == 2 and "not a whole number of chunks of 16" in output, output


def silero_model() -> Path:
    silero = pytest.importorskip("silero_vad", reason="the silero-vad package (dev extra) is not installed")
    from importlib.resources import files

    return Path(str(files(silero.__name__) / "data" / "silero_vad_16k_op15.onnx"))


def test_silero_vad_is_attacked_over_a_sequence_of_chunks(tmp_path):
    """silero-vad's shipped model (input [batch, sequence], state [2, batch, 128], sr int64 scalar) converts
    (its LSTMs sit in If branches on sr) and is attacked over 3 steps of 512 samples, framed as silero's own
    wrapper frames them (each call 576 samples: the previous call's last 64, then 512 new): speech is made to
    appear in noisy tones at eps 0.05. silero's own streaming wrapper (OnnxWrapper: state and context
    carried) re-scores the stored sequences here."""
    model = silero_model()
    from silero_vad.utils_vad import OnnxWrapper

    t = np.arange(3 * 512) / 16000
    rng = np.random.default_rng(0)
    x = np.stack([0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) * np.sin(2 * np.pi * 3 * t)
                  + 0.05 * rng.normal(size=t.size) for i in range(3)]).astype(np.float32)
    np.save(tmp_path / "audio.npy", x)
    out = tmp_path / "r.h5"
    code, output = run("attack", str(model), str(tmp_path / "audio.npy"), "-o", str(out), "--quiet", "--json",
                       "--state", "stateN=state", "--set", "sr=16000", "--chunk", "576", "--context", "64",
                       "--range", "-1", "1", "--scores", "probabilities", "--method", "ml-pgd", "--eps", "0.05",
                       "--target", "+0")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["gradients"] == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = OnnxWrapper(str(model), force_onnx_cpu=True)

    def speech(rows: np.ndarray) -> np.ndarray:
        wrapper.reset_states(len(rows))
        return np.max([wrapper(torch.from_numpy(rows[:, start:start + 512]), 16000).numpy()
                       for start in range(0, rows.shape[1], 512)], axis=0)

    with h5py.File(out, "r") as handle:
        np.testing.assert_allclose(handle["scores"][:], speech(handle["x"][:]), atol=1e-5)
        adv = speech(handle["x_adv"][:])
        np.testing.assert_allclose(handle["scores_adv"][:], adv, atol=1e-5)
        assert np.array_equal((adv[:, 0] > 0.5) & handle["attacked"][:], handle["success"][:])
        assert handle["attacked"][:].all()
    assert summary["success_rate"] == 1.0


def test_validate_replays_the_chunk_loop_and_the_values_given_once(streaming, tmp_path):
    """validate re-scores a streaming run from the file: the state pairs, the chunk and --set come from its
    params; the same model gives the same verdict row by row."""
    path, inputs, _ = streaming
    out = tmp_path / "r.h5"
    attack_stream(path, inputs, out, "--method", "ml-deepfool", "--target", "random", "--limit", "4")
    code, output = run("validate", str(out), "--model", str(path), "--json")
    assert code == 0, output
    with h5py.File(out, "r") as handle:
        assert np.array_equal(handle[f"transfer/{path.stem}/success"][:], handle["success"][:])
        np.testing.assert_allclose(handle[f"transfer/{path.stem}/scores_adv"][:], handle["scores_adv"][:], atol=1e-6)
