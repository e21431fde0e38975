"""Deployment variants in crosscheck: int8 and fp16 builds of a tf2onnx-style export and of the zoo models,
OpenVINO as a second runtime, and the refusals (exit 3, one line, nothing written lost). Every matrix
number of the tf2onnx-style check is recomputed here from the stored rows with onnxruntime and OpenVINO."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxattack.cli.main import main

from .test_keras_and_int8_exports import _digits, _keras2onnx_model

needs_fp16 = pytest.mark.skipif(importlib.util.find_spec("onnxconverter_common") is None,
                                reason="the 'variants' extra (onnxconverter-common) is not installed")
THRESHOLD = 0.5  # the tf2onnx-style model ends with a Sigmoid: probabilities


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def ort_scores(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    model = onnx.load(str(path))
    if any(node.op_type == "DequantizeLinear" for node in model.graph.node):  # QDQ kept, as the engine runs it
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def openvino_scores(path: Path, x: np.ndarray, precision: str | None = None) -> np.ndarray:
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {} if precision is None else {"INFERENCE_PRECISION_HINT": precision})
    return np.asarray(compiled(x.astype(np.float32))[compiled.output(0)])


@pytest.fixture(scope="module")
def keras(tmp_path_factory):
    """A keras2onnx/tf2onnx-style CNN (NHWC input, SAME_UPPER padding, MatMul + Add dense, Sigmoid) and ten
    of its digit images."""
    folder = tmp_path_factory.mktemp("keras")
    path = _keras2onnx_model(folder / "keras.onnx")
    _, images = _digits()
    np.save(folder / "x.npy", images[:10, :, :, None])
    return path, folder / "x.npy"


@needs_fp16
def test_int8_fp16_and_openvino_of_a_tf2onnx_export_every_number_recomputed(keras, tmp_path):
    path, inputs = keras
    runtimes = ["openvino"] if openvino_installed() else []
    out, kept = tmp_path / "check.h5", tmp_path / "kept"
    result = invoke("crosscheck", path, inputs, "-o", out, "--variants", ",".join(["int8", "fp16", *runtimes]),
                    "--keep-variants", kept, "--method", "ml-deepfool", "--max-iter", "20", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    names = ["keras", "int8", "fp16", *runtimes]
    assert summary["models"] == names
    assert sorted(p.name for p in kept.iterdir()) == ["keras.fp16.onnx", "keras.int8.onnx"]  # every file kept
    fp16 = onnx.load(str(kept / "keras.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    assert any(node.op_type == "Cast" for node in fp16.graph.node)
    # onnx2torch converts the fp16 graph (its Casts and float16 weights): attacked through torch, like int8
    assert summary["gradients"] == {"keras": "torch", "int8": "torch", "fp16": "torch"}
    files = {"keras": path, "int8": kept / "keras.int8.onnx", "fp16": kept / "keras.fp16.onnx"}

    def scores(name: str, x: np.ndarray) -> np.ndarray:
        return openvino_scores(path, x) if name == "openvino" else ort_scores(files[name], x)

    with h5py.File(out, "r") as handle:
        x = handle["x"][:]
        equal, diff = handle["agreement/equal"][:], handle["agreement/max_score_diff"][:]
        transfer = handle["transfer/success"][:]
        stored = {name: handle[f"models/{name}/scores"][:] for name in names}
        attrs = {name: dict(handle[f"models/{name}"].attrs) for name in names}
        runs = {name: {key: handle[f"models/{name}/run/{key}"][:] for key in ("x_adv", "y_target", "attacked",
                                                                                "success")}
                for name in names if attrs[name]["attacked"]}
    assert all(attrs[name]["kept"] for name in names)
    clean = {name: scores(name, x) for name in names}
    for i, a in enumerate(names):
        assert np.allclose(stored[a], clean[a], atol=1e-6), a
        for j, b in enumerate(names):
            assert equal[i, j] == pytest.approx(np.all((clean[a] > THRESHOLD) == (clean[b] > THRESHOLD), axis=1).mean())
            assert diff[i, j] == pytest.approx(np.abs(clean[a].astype(np.float64) - clean[b]).max(), abs=1e-6)
    assert diff[0, 1] > 0 and diff[0, 2] > 0 and 0 < diff[0, 2] < diff[0, 1]  # fp16 rounds less than int8
    assert equal[0, 1] >= 0.8 and equal[0, 2] == 1.0
    for i, a in enumerate(names):
        if a not in runs:
            assert np.isnan(transfer[i]).all()
            continue
        run = runs[a]
        attacked = run["attacked"].astype(bool)
        assert attacked.sum() >= 5, a
        for j, b in enumerate(names):
            reached = np.all((scores(b, run["x_adv"]) > THRESHOLD) == run["y_target"].astype(bool), axis=1) & attacked
            if i == j:
                assert np.array_equal(reached, run["success"] & attacked), a
            assert transfer[i, j] == pytest.approx(reached.sum() / attacked.sum()), (a, b)
    assert transfer[0, 2] >= 0.8 and transfer[2, 0] >= 0.8  # fp16 and float hold each other's inputs
    if runtimes:
        assert attrs["openvino"]["role"] == "runtime" and attrs["openvino"]["runtime"] == "openvino"
        assert "openvino" in attrs["openvino"]["runtime_detail"] and "precision" in attrs["openvino"]["runtime_detail"]
        assert attrs["keras"]["runtime"] == "onnxruntime" and "judged only" in summary["not_attacked"]["openvino"]
        assert not np.isnan(transfer[0, 3])  # the reference's adversarial inputs, validated in a second framework


@needs_fp16
@pytest.mark.parametrize("name", ["digits-mosaic", "digits-ranker", "yeast-mlp"])
def test_int8_and_fp16_variants_of_the_zoo_models_work(zoo_model, zoo_inputs, tmp_path, name):
    path = zoo_model(name)
    np.save(tmp_path / "x.npy", zoo_inputs(name, 6))
    out, kept = tmp_path / "check.h5", tmp_path / "kept"
    result = invoke("crosscheck", path, tmp_path / "x.npy", "-o", out, "--variants", "int8,fp16", "--keep-variants",
                    kept, "--method", "ml-deepfool", "--max-iter", "5", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["models"] == [name, "int8", "fp16"] and not summary["not_attacked"]
    assert summary["gradients"]["int8"] == "torch" and summary["gradients"]["fp16"] == "torch"
    agreement, transfer = np.array(summary["agreement"], float), np.array(summary["transfer"], float)
    assert not np.isnan(agreement).any() and agreement[0, 2] == 1.0 and agreement[0, 1] >= 0.5
    assert not np.isnan(transfer).any()
    assert sorted(p.name for p in kept.iterdir()) == [f"{name}.fp16.onnx", f"{name}.int8.onnx"]


@needs_fp16
@pytest.mark.parametrize("name,variants,words", [
    ("yeast-mlp-int8", "fp16", "quantized already (DynamicQuantizeLinear, MatMulInteger)"),
    ("yeast-mlp-int8", "int8", "quantized already"),
    ("yeast-forest", "int8-dynamic,fp16", "TreeEnsembleClassifier (ai.onnx.ml) compute in float32 or float64 only"),
    pytest.param("yeast-forest", "openvino", "OpenVINO cannot load the model: No conversion rule found for "
                 "operations: ai.onnx.ml.TreeEnsembleClassifier",
                 marks=pytest.mark.skipif(not openvino_installed(), reason="the 'openvino' extra is not installed")),
])
def test_a_variant_that_is_not_made_is_exit_3_in_one_line_and_loses_nothing(zoo_model, zoo_inputs, tmp_path,
                                                                            name, variants, words):
    path = zoo_model(name)
    np.save(tmp_path / "x.npy", zoo_inputs(name, 4))
    kept = tmp_path / "kept"
    kept.mkdir()
    mine = kept / "notes.txt"
    mine.write_text("the user's own file")
    result = CliRunner().invoke(main, ["crosscheck", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "c.h5"),
                                       "--variants", variants,
                                       "--keep-variants", str(kept), "--method", "ml-deepfool", "--quiet"])
    assert result.exit_code == 3, result.output
    assert words in result.output and f"variant {variants.split(',')[-1]} of {path.name}" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert mine.read_text() == "the user's own file"
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.parts").exists()


def test_a_variant_whose_package_is_missing_is_exit_3_naming_the_extra(keras, tmp_path):
    """Run in a child process where the package cannot be imported (as on a machine without the extra)."""
    path, inputs = keras
    for variant, package, extra in [("fp16", "onnxconverter_common", "onnxattack[variants]"),
                                    ("openvino", "openvino", "onnxattack[openvino]")]:
        out = tmp_path / f"{variant}.h5"
        code = (f"import sys; sys.modules[{package!r}] = None; sys.argv[0] = 'onnxattack'\n"
                "from onnxattack.cli.main import main; main()")
        child = subprocess.run([sys.executable, "-c", code, "crosscheck", str(path), str(inputs), "-o", str(out),
                                "--variants", f"int8,{variant}", "--keep-variants", str(tmp_path / "kept"),
                                "--method", "ml-deepfool", "--quiet"], capture_output=True, text=True, timeout=300)
        assert child.returncode == 3, child.stderr
        assert extra in child.stderr and len(child.stderr.strip().splitlines()) == 1, child.stderr
        assert not out.exists() and not (tmp_path / "kept").exists()  # refused before any work


@pytest.mark.skipif(not openvino_installed(), reason="the 'openvino' extra is not installed")
def test_validate_in_openvino_names_the_runtime_and_its_verdicts_are_openvinos(keras, tmp_path):
    path, inputs = keras
    out = tmp_path / "r.h5"
    assert invoke("attack", path, inputs, "-o", out, "--method", "ml-deepfool", "--max-iter", "20",
                  "--quiet").exit_code == 0
    result = invoke("validate", out, "--model", f"{path}:runtime=openvino-f32", "--model", f"{path}:runtime=openvino",
                    "--json")
    assert result.exit_code == 0, result.output
    rates = json.loads(result.output)
    assert set(rates) == {"keras-openvino-f32", "keras-openvino"}
    with h5py.File(out, "r") as handle:
        x_adv, target = handle["x_adv"][:], handle["y_target"][:].astype(bool)
        attacked = handle["attacked"][:].astype(bool)
        groups = {key: (handle[f"transfer/{key}/success"][:], dict(handle[f"transfer/{key}"].attrs)) for key in rates}
    for key, precision in [("keras-openvino-f32", "f32"), ("keras-openvino", None)]:
        success, attrs = groups[key]
        assert attrs["runtime"] == key.removeprefix("keras-") and "openvino" in attrs["runtime_detail"]
        reached = np.all((openvino_scores(path, x_adv, precision) > THRESHOLD) == target, axis=1) & attacked
        assert np.array_equal(success, reached), key
    assert "f32" in groups["keras-openvino-f32"][1]["runtime_detail"]
    bad = CliRunner().invoke(main, ["validate", str(out), "--model", f"{path}:runtime=tvm"])
    assert bad.exit_code == 2 and "unknown runtime 'tvm'" in bad.output
    text = invoke("validate", out, "--model", f"{path}:runtime=openvino-f32")
    assert "judged by: openvino" in text.output and "inference precision f32" in text.output
    reference = CliRunner().invoke(main, ["crosscheck", f"{path}:runtime=openvino", str(inputs), "-o",
                                          str(tmp_path / "c.h5"), "--method", "ml-deepfool", "--quiet"])
    assert reference.exit_code == 2 and "--variants openvino" in reference.output
    assert len(reference.output.strip().splitlines()) == 1 and not (tmp_path / "c.h5.parts").exists()


def test_a_variant_without_a_torch_graph_is_attacked_with_estimated_gradients_and_says_why(zoo_model, zoo_inputs,
                                                                                           tmp_path):
    path = zoo_model("yeast-forest")
    np.save(tmp_path / "x.npy", zoo_inputs("yeast-forest", 3))
    args = ["crosscheck", path, tmp_path / "x.npy", "-o", tmp_path / "c.h5", "--variants", "int8-dynamic", "--method",
            "ml-deepfool", "--max-iter", "3", "--quiet"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    why = "estimated from onnxruntime queries (the score graph cannot become a torch graph: no converter for " \
          "ai.onnx.ml.TreeEnsembleClassifier"
    assert result.output.count(f"attacked with gradients {why}") == 2
    with h5py.File(tmp_path / "c.h5", "r") as handle:
        assert handle["models/int8-dynamic"].attrs["gradients"].startswith(why)
        assert handle["models/int8-dynamic/run"].attrs["gradients"] == "estimated"
        assert not np.isnan(handle["transfer/success"][:]).any()
