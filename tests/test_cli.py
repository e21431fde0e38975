"""The command line, end to end: real models, real files, onnxruntime as the judge."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto
from onnxattack.cli.main import main
from PIL import Image

from . import exporters as ex

FAST = ["--max-iter", "30", "--binary-steps", "3", "--learning-rate", "0.1", "--quiet"]
FAST_OPTIONS = {"ml-cw": FAST, "ml-deepfool": ["--max-iter", "20", "--quiet"]}


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def mosaic(zoo_model, zoo_inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mosaic")
    x = zoo_inputs("digits-mosaic", 12)
    np.save(folder / "x.npy", x)
    return zoo_model("digits-mosaic"), x, folder


def independent_check(path: Path, model_path: Path) -> None:
    """Reopen with h5py, re-run onnxruntime on x_adv, recompute success and the norms."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    with h5py.File(path, "r") as handle:
        assert handle.attrs["complete"]
        x, x_adv = handle["x"][:], handle["x_adv"][:]
        scores_adv = session.run(None, {session.get_inputs()[0].name: x_adv})[0]
        assert np.allclose(scores_adv, handle["scores_adv"][:], atol=1e-6)
        threshold = float(handle.attrs["threshold"])
        reached = ((scores_adv > threshold) == handle["y_target"][:].astype(bool)).all(axis=1)
        assert np.array_equal(reached & handle["attacked"][:], handle["success"][:])
        assert np.array_equal((scores_adv > threshold).astype(np.int8), handle["y_adv"][:])
        l2 = np.linalg.norm((x_adv.astype(np.float64) - x).reshape(len(x), -1), axis=1)
        assert np.allclose(l2, handle["l2"][:], atol=1e-5)
        assert np.array_equal(x[~handle["attacked"][:]], x_adv[~handle["attacked"][:]])
        calls = handle["model_calls"][:]
        assert (calls[handle["attacked"][:]] > 0).all() and (calls[~handle["attacked"][:]] == 0).all()
        for key in ("model_sha256", "method", "target", "params", "seed", "scores_kind", "labels", "versions",
                    "created"):
            assert key in handle.attrs
        assert handle["x"].chunks is not None and handle["x"].compression == "gzip"


def test_inspect_json_answers_for_a_zoo_model(mosaic):
    model_path, _, _ = mosaic
    result = invoke("inspect", model_path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["converts"] is True and report["score_output"] == "scores"
    assert report["scores_kind"] == "probabilities" and report["labels"][3] == "three"
    assert report["opsets"]["ai.onnx"] == 18 and report["fidelity"] <= 1e-4


def test_inspect_names_blocking_ops_and_the_estimated_route(tmp_path):
    """A model without a torch graph is still attackable (estimated gradients): inspect says so and exits 0,
    as `attack` then runs; the blocking ops are named."""
    path = ex.unconvertible_model(tmp_path / "ml.onnx")
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "Hardmax-13" in result.output and "ai.onnx.ml.Binarizer-1" in result.output
    assert "converts    no" in result.output and "gradients estimated from onnxruntime queries" in result.output
    report = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json"]).stdout)
    assert report["converts"] is False and report["attack_route"] == "estimated"


def test_inspect_exits_3_for_a_model_that_cannot_be_attacked(tmp_path):
    path = ex.unconvertible_model(tmp_path / "ml.onnx")
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64  # token ids: nothing to perturb
    model.graph.node[0].op_type = "Cast"
    del model.graph.node[0].attribute[:]
    model.graph.node[0].domain = ""
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("to", TensorProto.FLOAT))
    onnx.save(model, str(path))
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 3, result.output
    assert "integer" in result.output.splitlines()[-1]


@pytest.mark.parametrize("method,target", [("ml-cw", "hide-single"), ("ml-deepfool", "random")])
def test_attack_npy_writes_a_file_onnxruntime_confirms(mosaic, tmp_path, method, target):
    model_path, _, folder = mosaic
    out = tmp_path / "r.h5"
    result = invoke("attack", model_path, folder / "x.npy", "-o", out, "--method", method, "--target", target,
                    "--batch-size", "5", "--json", *FAST_OPTIONS[method])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == 12 and summary["complete"] and summary["model_calls_mean"] > 0
    assert summary["success_rate"] >= 0.8
    independent_check(out, model_path)


@pytest.mark.parametrize("method", ["rank1", "rank2"])
def test_rank_methods_through_the_cli(zoo_model, zoo_inputs, tmp_path, method):
    np.save(tmp_path / "x.npy", zoo_inputs("digits-ranker", 8))
    out = tmp_path / "rank.h5"
    result = invoke("attack", zoo_model("digits-ranker"), tmp_path / "x.npy", "-o", out, "--method", method,
                    "--target", "top:3:best", "--json", "--max-iter", "100", "--binary-steps", "5",
                    "--learning-rate", "0.1", "--quiet")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as handle:
        scores = handle["scores_adv"][:]
        target = handle["y_target"][:].astype(bool)
        assert (target.sum(axis=1) == 3).all()
        top3 = np.argsort(-scores, axis=1)[:, :3]
        recomputed = np.array([set(top3[i]) == set(np.flatnonzero(target[i])) for i in range(len(scores))])
        assert np.array_equal(recomputed & handle["attacked"][:], handle["success"][:])
        assert handle["success"][:].mean() >= 0.85


def test_npz_h5_and_image_folder_inputs_give_the_same_rows(mosaic, tmp_path):
    model_path, x, _ = mosaic
    x = (np.round(x[:6] * 255) / 255).astype(np.float32)  # exactly representable as 8-bit pixels
    np.savez_compressed(tmp_path / "in.npz", inputs=x, other=np.zeros(3))
    with h5py.File(tmp_path / "in.h5", "w") as handle:
        handle["group/inputs"] = x
    images = tmp_path / "images"
    images.mkdir()
    for i, sample in enumerate(x):
        Image.fromarray(np.round(sample[0] * 255).astype(np.uint8), mode="L").save(images / f"{i:03d}.png")
    rows = {}
    for name, source, extra in [("npz", tmp_path / "in.npz", ["--key", "inputs"]),
                                ("h5", tmp_path / "in.h5", ["--key", "group/inputs"]),
                                ("images", images, ["--image-layout", "chw"])]:
        out = tmp_path / f"{name}.h5"
        result = invoke("attack", model_path, source, "-o", out, "--method", "ml-deepfool", "--max-iter", "10",
                        "--quiet", "--batch-size", "4", *extra)
        assert result.exit_code == 0, result.output
        with h5py.File(out, "r") as handle:
            rows[name] = (handle["x"][:], handle["x_adv"][:], handle["success"][:])
    for name in ("h5", "images"):
        assert np.allclose(rows[name][0], rows["npz"][0], atol=1e-6)
        assert np.allclose(rows[name][1], rows["npz"][1], atol=1e-5)
        assert np.array_equal(rows[name][2], rows["npz"][2])


def test_refuses_to_overwrite_unless_asked(mosaic, tmp_path):
    model_path, _, folder = mosaic
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    result = CliRunner().invoke(main, ["attack", str(model_path), str(folder / "x.npy"), "-o", str(out), "--quiet"])
    assert result.exit_code == 2 and "exists" in result.output
    assert out.read_bytes() == b"precious"


def test_resume_refuses_other_settings(mosaic, tmp_path):
    model_path, _, folder = mosaic
    out = tmp_path / "r.h5"
    assert invoke("attack", model_path, folder / "x.npy", "-o", out, "--method", "ml-deepfool", "--quiet",
                  "--max-iter", "5").exit_code == 0
    result = CliRunner().invoke(main, ["attack", str(model_path), str(folder / "x.npy"), "-o", str(out), "--resume",
                                       "--method", "ml-cw", "--quiet"])
    assert result.exit_code == 2 and "method" in result.output


def test_transfer_and_report(mosaic, tmp_path, zoo_model):
    model_path, _, folder = mosaic
    out = tmp_path / "r.h5"
    attacked = invoke("attack", model_path, folder / "x.npy", "-o", out, "--method", "ml-deepfool", "--quiet")
    assert attacked.exit_code == 0
    other = zoo_model("digits-ranker")  # same ten labels, another model
    result = invoke("validate", out, "--model", model_path, "--model", other, "--json")
    assert result.exit_code == 0, result.output
    rates = json.loads(result.output)
    with h5py.File(out, "r") as handle:
        same = handle["transfer/digits-mosaic/success"][:]
        assert np.array_equal(same, handle["success"][:])  # the model itself: identical verdicts
        own_rate = handle["success"][:][handle["attacked"][:]].mean()
        assert rates["digits-mosaic"]["success_rate"] == pytest.approx(own_rate)
        assert handle["transfer/digits-ranker/y_adv"].shape == handle["y_adv"].shape
    assert 0.0 <= rates["digits-ranker"]["flip_rate"] <= 1.0
    png = tmp_path / "figure.png"
    report = invoke("report", out, "--png", png, "--json")
    assert report.exit_code == 0, report.output
    summary = json.loads(report.output)
    assert summary["rows"] == 12 and "digits-ranker" in summary["transfer"]
    with Image.open(png) as image:
        assert image.size[0] > 300 and image.size[1] > 300


@pytest.mark.parametrize("args,message", [
    (["--method", "fgsm"], "Invalid value for '--method'"),
    (["--target", "+unicorn"], "unknown label"),
    (["--range", "1", "0"], "LO must be below HI"),
    (["--target", "top:3"], "ranking methods"),
    (["--batch-size", "0"], "batch-size"),
    (["--method", "ml-deepfool", "--kappa", "1"], "'--kappa': --kappa does not apply to ml-deepfool"),
    # the refusal names flags, never internal names (abort_early, jacobian)
    (["--method", "ml-cw", "--eps", "0.1"], "--eps does not apply to ml-cw (it takes --max-iter, --binary-steps, "
                                            "--learning-rate, --kappa, --initial-const, --exhaustive, "
                                            "--no-early-stop, --budget)"),
    (["--seed", str(2**63)], "at most 2^63 - 1"),
    (["--seed", "-1"], "'--seed'"),
    (["--gradients", "sometimes"], "Invalid value for '--gradients'"),
])
def test_bad_options_exit_2_with_one_line(mosaic, tmp_path, args, message):
    model_path, _, folder = mosaic
    result = CliRunner().invoke(main, ["attack", str(model_path), str(folder / "x.npy"), "-o",
                                       str(tmp_path / "o.h5"), "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_inputs_exit_2(mosaic, tmp_path):
    model_path, _, _ = mosaic
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 16, 16), dtype=np.float32))
    result = CliRunner().invoke(main, ["attack", str(model_path), str(tmp_path / "wrong.npy"), "-o",
                                       str(tmp_path / "o.h5"), "--quiet"])
    assert result.exit_code == 2 and "rows of shape" in result.output
    result = CliRunner().invoke(main, ["attack", str(tmp_path / "none.onnx"), str(tmp_path / "wrong.npy"), "-o",
                                       str(tmp_path / "o.h5")])
    assert result.exit_code == 2 and "not found" in result.output


def test_zoo_list_names_every_model():
    result = invoke("zoo", "list")
    assert result.exit_code == 0
    for name in ("digits-mosaic", "digits-ranker", "yeast-mlp"):
        assert name in result.output


def test_integer_input_model_is_validated_in_its_own_dtype(tmp_path):
    import torch

    class Pixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = ex.MLP(features=12, labels=4)

        def forward(self, x):
            return self.net(x.float() / 255.0 * 4 - 2)

    torch.manual_seed(0)
    path = ex.export_torch(Pixels(), torch.randint(0, 256, (2, 12), dtype=torch.uint8), tmp_path / "u8.onnx",
                           dynamo=False, opset=17)
    pixels = np.random.default_rng(0).integers(0, 256, size=(10, 12), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    out = tmp_path / "u8.h5"
    result = invoke("attack", path, tmp_path / "x.npy", "-o", out, "--method", "ml-deepfool", "--range", "0", "255",
                    "--target", "random", "--quiet")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        x_adv = handle["x_adv"][:]
        assert x_adv.dtype == np.uint8 and handle["x"].dtype == np.uint8
        scores = session.run(None, {"input": x_adv})[0]
        reached = ((scores > 0) == handle["y_target"][:].astype(bool)).all(axis=1)
        assert np.array_equal(reached & handle["attacked"][:], handle["success"][:])
        assert handle["success"][:].any()  # rounding to whole pixel values still leaves successes


def test_target_file_rows_become_the_targets(mosaic, tmp_path):
    model_path, x, folder = mosaic
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    predicted = (session.run(None, {"input": x})[0] > 0.5).astype(np.int8)
    targets = predicted.copy()
    targets[:, 0] = 1 - targets[:, 0]  # flip label "zero" everywhere
    np.save(tmp_path / "targets.npy", targets)
    out = tmp_path / "t.h5"
    result = invoke("attack", model_path, folder / "x.npy", "-o", out, "--method", "ml-deepfool",
                    "--target-file", tmp_path / "targets.npy", "--quiet")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as handle:
        assert np.array_equal(handle["y_target"][:], targets)
        assert handle["attacked"][:].all()
        assert handle.attrs["target"] == "file:targets.npy"


def test_inspect_json_for_a_skl2onnx_model_and_a_legacy_export(tmp_path):
    skl, _ = ex.sklearn_mlp(tmp_path / "skl.onnx")
    result = invoke("inspect", skl, "--output", "probabilities", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["producer"].startswith("skl2onnx") and report["opsets"]["ai.onnx.ml"] == 1
    assert report["converts"] and report["scores_kind"] == "probabilities" and report["num_labels"] == 3
    import torch

    fixed = ex.export_torch(ex.CNN(), torch.rand(1, 1, 8, 8), tmp_path / "fixed.onnx", dynamo=False, opset=11,
                            dynamic_batch=False)
    report = json.loads(invoke("inspect", fixed, "--json").output)
    assert report["converts"] and report["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert any("baked" in note for note in report["notes"])


def test_zoo_build_reports_metrics_and_refuses_unknown_names(zoo_model):
    zoo_model("yeast-mlp")
    result = invoke("zoo", "build", "yeast-mlp")
    assert result.exit_code == 0 and "hamming_loss" in result.output and "exact_match" in result.output
    result = CliRunner().invoke(main, ["zoo", "build", "imagenet"])
    assert result.exit_code == 2 and "unknown zoo model" in result.output
