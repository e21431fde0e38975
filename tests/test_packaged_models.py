"""Models that Python packages ship, used as a new user would: located inside the installed package (the dev
extra installs openwakeword 0.4.0 and magika), attacked or refused from the command line, success recomputed
here with onnxruntime on the shipped file. Nothing is downloaded; a test skips when its package is absent.

Also, reproduced on small synthetic graphs (never skipped), the export quirks those packages' models have:
madmom's declared-too-narrow output ending with a Squeeze of every size-1 dim, and ddddocr's time-major
[T, N, L] scores.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnxattack.cli.main import main


def package_folder(name: str) -> Path:
    """The installed package's folder, found without importing it (its own imports may be heavy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name!r} is not installed (it comes with the 'dev' extra)")
    return Path(next(iter(spec.submodule_search_locations)))


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def attack(model: Path, x: np.ndarray, tmp: Path, *extra: object) -> tuple[dict, Path]:
    np.save(tmp / "x.npy", x.astype(np.float32))
    out = tmp / "r.h5"
    result = invoke("attack", model, tmp / "x.npy", "-o", out, "--quiet", "--json", "--overwrite", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output), out


def recomputed_success(model: Path, out: Path, threshold: float) -> np.ndarray:
    """onnxruntime's verdict on x_adv, one row at a time (the shipped graphs take a batch of one)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with h5py.File(out, "r") as handle:
        x_adv, target, attacked = handle["x_adv"][:], handle["y_target"][:].astype(bool), handle["attacked"][:]
        low, high = json.loads(handle.attrs["params"])["box"]
        assert float(x_adv.min()) >= low and float(x_adv.max()) <= high
        scores = np.concatenate([session.run(None, {name: row[None]})[0].reshape(1, -1) for row in x_adv])
        reached = ((scores > threshold) == target).all(axis=1)
        assert np.array_equal(reached & attacked, handle["success"][:])
    return reached[attacked]


def openwakeword_model(name: str) -> Path:
    path = package_folder("openwakeword") / "resources" / "models" / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"this openwakeword ships no {path.name} (the tests use 0.4.0, which ships its models)")
    return path


def test_openwakeword_verifier_model_with_an_if_is_attacked_through_torch(tmp_path):
    """hey_jarvis: an MLP on [1, 16, 96] speech embeddings whose graph ends with an If (p >= 0.5: a second,
    verifier MLP decides); batch size 1 baked in. Target: the wake word heard on inputs where it is not."""
    model = openwakeword_model("hey_jarvis_v0.1")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    candidates = np.clip(np.random.default_rng(0).normal(1.8, 16.0, (16, 16, 96)), -60, 60).astype(np.float32)
    silent = [row for row in candidates if session.run(None, {"x.1": row[None]})[0].item() < 0.5][:4]
    assert len(silent) == 4
    summary, out = attack(model, np.stack(silent), tmp_path, "--range", -60, 60, "--target", "+0",
                          "--method", "ml-cw", "--max-iter", 50, "--binary-steps", 3)
    assert summary["gradients"] == "torch" and summary["scores_kind"] == "probabilities"
    assert any("baked" in note for note in summary["notes"])
    assert recomputed_success(model, out, threshold=0.5).mean() >= 0.75


def test_openwakeword_melspectrogram_with_a_computed_clip_converts(tmp_path):
    """melspectrogram: raw 16 kHz audio -> log-mel frames [N, 1, T, 32], clipped at max - 80 dB (a Clip whose
    min is computed in the graph, which onnx2torch refuses)."""
    model = openwakeword_model("melspectrogram")
    result = invoke("inspect", model, "--shape", 1760, "--range", -32768, 32767, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["converts"] is True and report["fidelity"] < 1e-4
    assert report["blocking_ops"] == []


def magika_model() -> Path:
    found = sorted((package_folder("magika") / "models").glob("*/model.onnx"))
    if not found:
        pytest.skip("this magika ships no models/*/model.onnx")
    return found[-1]


def test_magika_byte_input_is_refused_in_one_line_naming_it(tmp_path):
    """magika: int32 byte values [N, 2048] -> 214 content types. No gradient reaches an integer input."""
    model = magika_model()
    np.save(tmp_path / "bytes.npy", np.random.default_rng(0).integers(0, 256, (3, 2048)).astype(np.int32))
    for command in (["inspect", model], ["attack", model, tmp_path / "bytes.npy", "-o", tmp_path / "r.h5",
                                         "--range", 0, 255, "--quiet"]):
        result = invoke(*command)
        assert result.exit_code == 3, result.output
        error = [line for line in result.output.splitlines() if "error" in line]
        assert len(error) == 1 and "Traceback" not in result.output
        assert "'bytes'" in error[0] and "int32" in error[0] and "integer inputs" in error[0]
    assert not (tmp_path / "r.h5").exists()


# The quirks of madmom's and ddddocr's exports, on synthetic graphs (the packages are too heavy for the extra).

def _save(tmp_path: Path, name: str, nodes, inputs, outputs, initializers) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_a_madmom_style_frame_model_declared_rank_one_and_squeezed(tmp_path):
    """madmom's chroma_dnn: input [T, F] (each frame a row), MatMul + Sigmoid + a Squeeze with no axes; the
    output is declared ['output_0_dim_0'] though it is [T, 12] (and [12] for a single frame)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["input", "weights"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
             helper.make_node("Squeeze", ["probabilities"], ["output_0_squeeze"])]
    path = _save(tmp_path, "frames", nodes,
                 [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["input_dim_0", "input_dim_1"])],
                 [helper.make_tensor_value_info("output_0_squeeze", TensorProto.FLOAT, ["output_0_dim_0"])],
                 [numpy_helper.from_array(rng.normal(0, 1.0, (32, 6)).astype(np.float32), "weights")])
    inspected = invoke("inspect", path, "--shape", 32, "--json")
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.stdout)["converts"] is True
    # 5 rows in batches of 2: the last batch has one row, which the Squeeze would strip of its batch dim
    summary, out = attack(path, rng.random((5, 32)), tmp_path, "--method", "ml-deepfool", "--target", "hide-single",
                          "--batch-size", 2, "--max-iter", 30)
    assert summary["scores_kind"] == "probabilities" and summary["gradients"] == "torch"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        scores = session.run(None, {"input": handle["x_adv"][:]})[0]
        reached = ((scores > 0.5) == handle["y_target"][:].astype(bool)).all(axis=1)
        assert np.array_equal(reached & handle["attacked"][:], handle["success"][:])
        assert reached[handle["attacked"][:]].mean() >= 0.8


def test_time_major_scores_declared_wrongly_are_found_batch_second(tmp_path):
    """ddddocr's OCR model: CTC scores [T, N, L] (batch second) declared as [1, 'seqlen']: the probe shows
    which dim is the batch, and the scores fold over the frames."""
    nodes = [helper.make_node("Transpose", ["image"], ["time_major"], perm=[1, 0, 2])]
    path = _save(tmp_path, "ctc", nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 6, 5])],
                 [helper.make_tensor_value_info("time_major", TensorProto.FLOAT, [1, "seqlen"])], [])
    x = np.random.default_rng(0).random((3, 6, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = invoke("attack", path, tmp_path / "x.npy", "-o", tmp_path / "r.h5", "--quiet", "--json",
                    "--method", "ml-deepfool", "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    assert "time-major: its batch is dim 1" in result.output
    with h5py.File(tmp_path / "r.h5", "r") as handle:
        assert np.allclose(handle["scores"][:], x.max(axis=1))  # [T, N, L] -> [N, T, L] -> max over T
