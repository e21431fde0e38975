"""Universal perturbations and robustness curves from the command line, on the zoo models; success is
recomputed here from onnxruntime, budgets are checked in the input dtype, files are reopened."""

from __future__ import annotations

import json

import h5py
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxattack.cli.main import main

from onnxattack import attack_arrays, load
from onnxattack.attacks import UniversalPerturbation


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code == 1:
        raise result.exception  # an internal error: show its traceback
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def yeast(zoo_model, zoo_inputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("universal")
    np.save(folder / "x.npy", zoo_inputs("yeast-mlp", 24))
    return zoo_model("yeast-mlp"), zoo_model("yeast-forest"), folder / "x.npy"


def recomputed(model, x_adv: np.ndarray, target: np.ndarray, threshold: float) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: x_adv})
    probabilities = next(s for s in scores if np.asarray(s).ndim == 2 and np.asarray(s).dtype == np.float32)
    return ((probabilities > threshold) == target.astype(bool)).all(axis=1)


def test_one_delta_for_every_input_within_the_budget_and_transferred(yeast, tmp_path):
    model, forest, inputs = yeast
    out = tmp_path / "u.h5"
    code, output = run("attack", model, inputs, "-o", out, "--method", "universal", "--eps", "0.3",
                       "--range", "-1", "1", "--target=-0", "--batch-size", "8", "--json", "--quiet")
    assert code == 0, output
    summary = json.loads(output)
    with h5py.File(out, "r") as handle:
        delta = handle["universal_delta"][:]
        x, x_adv = handle["x"][:], handle["x_adv"][:]
        attacked, success = handle["attacked"][:], handle["success"][:]
        threshold = float(handle.attrs["threshold"])
        assert delta.shape == x.shape[1:] and np.abs(delta).max() <= 0.3
        assert np.abs(x_adv.astype(np.float64) - x).max() <= 0.3  # exact in float32
        moved = np.clip(x + delta, -1, 1)
        assert np.allclose(x_adv[attacked], moved[attacked], atol=1e-6)  # the same delta for every input
        assert np.array_equal(recomputed(model, x_adv, handle["y_target"][:], threshold) & attacked, success)
    assert summary["success_rate"] >= 0.5  # one perturbation hides label 0 on most inputs
    code, output = run("validate", out, "--model", forest, "--json")
    assert code == 0, output
    with h5py.File(out, "r") as handle:
        assert handle[f"transfer/{forest.stem}/success"].shape == success.shape


def test_resume_reads_the_stored_delta(yeast, tmp_path):
    model, _, inputs = yeast
    out = tmp_path / "u.h5"
    args = ("attack", model, inputs, "-o", out, "--method", "universal", "--eps", "0.2", "--range", "-1", "1",
            "--batch-size", "8", "--quiet", "--max-iter", "5")
    assert run(*args)[0] == 0
    with h5py.File(out, "r+") as handle:
        delta, x_adv, calls = handle["universal_delta"][:], handle["x_adv"][:], handle["model_calls"][:]
        handle.attrs["rows_written"] = 8  # as if the run had stopped after its first batch
        handle.attrs["complete"] = False
        handle["universal_delta"][...] = delta  # the delta was written before any row
    code, output = run(*args, "--resume")
    assert code == 0, output
    with h5py.File(out, "r") as handle:
        assert np.array_equal(handle["universal_delta"][:], delta)
        assert np.array_equal(handle["x_adv"][:], x_adv)
        assert np.array_equal(handle["model_calls"][:], calls)  # the fit's calls are counted after a resume too
        assert bool(handle.attrs["complete"])


def test_universal_refuses_shards(yeast, tmp_path):
    model, _, inputs = yeast
    code, output = run("attack", model, inputs, "-o", tmp_path / "u.h5", "--method", "universal",
                       "--range", "-1", "1", "--shard", "0/2")
    assert code == 2 and "universal" in output and output.count("\n") == 1


def test_library_call_learns_delta_from_the_batch(zoo_model, zoo_inputs):
    model = load(zoo_model("digits-mosaic"), device="cpu")
    x = zoo_inputs("digits-mosaic", 8)
    attack = UniversalPerturbation(eps=0.2, max_iter=10)
    result = attack_arrays(model, x, attack, "hide-single")
    assert attack.delta is not None and float(attack.delta.abs().max()) <= 0.2
    rows = result.attacked
    assert np.abs(result.x_adv[rows].astype(np.float64) - result.x[rows]).max() <= 0.2
    assert np.array_equal(recomputed(zoo_model("digits-mosaic"), result.x_adv, result.y_target,
                                     model.reader.threshold) & rows, result.success)


def test_curve_one_group_per_eps_with_the_budget_respected(zoo_model, zoo_inputs, tmp_path):
    model = zoo_model("digits-mosaic")
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 8))
    out, png = tmp_path / "curve.h5", tmp_path / "curve.png"
    code, output = run("curve", model, tmp_path / "x.npy", "-o", out, "--method", "ml-pgd",
                       "--eps", "0.02,0.3,0.1", "--max-iter", "20", "--png", png, "--json", "--quiet")
    assert code == 0, output
    curve = json.loads(output)
    assert [p["eps"] for p in curve["points"]] == [0.02, 0.1, 0.3]
    rates = [p["success_rate"] for p in curve["points"]]
    assert rates[-1] >= rates[0] and rates[-1] > 0
    with h5py.File(out, "r") as handle:
        assert sorted(handle["eps"]) == ["0.02", "0.1", "0.3"]
        for key, point in zip(("0.02", "0.1", "0.3"), curve["points"], strict=True):
            group = handle[f"eps/{key}"]
            delta = group["x_adv"][:].astype(np.float64) - group["x"][:]
            assert np.abs(delta).max() <= float(key)  # the L-inf budget, exactly in float32
            assert json.loads(group.attrs["params"])["eps"] == float(key)
            assert point["successes"] == int(group["success"][:].sum())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".curve.h5*"))  # the per-epsilon part files are gone
    code, again = run("curve", model, tmp_path / "x.npy", "-o", out, "--method", "ml-pgd", "--eps", "0.02,0.3,0.1",
                      "--max-iter", "20", "--resume", "--json", "--quiet")
    assert code == 0 and json.loads(again)["points"] == curve["points"]
    code, output = run("export", out, "-o", tmp_path / "e.npz")
    assert code == 2 and "--eps" in output and "0.02, 0.1, 0.3" in output  # a curve holds one run per epsilon
    assert run("export", out, "-o", tmp_path / "e.npz", "--eps", "0.1")[0] == 0
    with np.load(tmp_path / "e.npz", allow_pickle=False) as arrays, h5py.File(out, "r") as handle:
        assert np.array_equal(arrays["x_adv"], handle["eps/0.1/x_adv"][:])
        assert json.loads(str(arrays["attrs"]))["params"] == handle["eps/0.1"].attrs["params"]


def test_curve_refuses_a_method_without_a_budget_and_bad_eps(zoo_model, zoo_inputs, tmp_path):
    model = zoo_model("digits-mosaic")
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 2))
    code, output = run("curve", model, tmp_path / "x.npy", "-o", tmp_path / "c.h5", "--method", "ml-cw",
                       "--eps", "0.1")
    assert code == 2 and "'ml-cw' is not one of 'ml-pgd'" in output  # curve offers budgeted methods only
    code, output = run("curve", model, tmp_path / "x.npy", "-o", tmp_path / "c.h5", "--eps", "0.1,-2")
    assert code == 2 and "positive" in output
    assert not (tmp_path / "c.h5").exists()


def test_universal_top_k_pushes_every_input_top_label_out(zoo_model, zoo_inputs, tmp_path):
    """kUAP on the ranker: one delta moves each input's clean top-1 label out of its top 1."""
    model = zoo_model("digits-ranker")
    np.save(tmp_path / "x.npy", zoo_inputs("digits-ranker", 12))
    out = tmp_path / "k.h5"
    code, output = run("attack", model, tmp_path / "x.npy", "-o", out, "--method", "universal-topk", "--top-k", "1",
                       "--eps", "0.3", "--json", "--quiet")
    assert code == 0, output
    assert json.loads(output)["success_rate"] >= 0.5
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        assert handle.attrs["target"] == "hide-all" and handle.attrs["task"] == "top-k-exclusion"
        scores = session.run(None, {session.get_inputs()[0].name: handle["x_adv"][:]})[0]
        best = scores.argmax(axis=1)
        target = handle["y_target"][:].astype(bool)
        assert np.array_equal(handle["y_pred"][:].astype(bool), target)  # S = the clean top 1
        pushed_out = ~target[np.arange(len(best)), best]
        assert np.array_equal(pushed_out & handle["attacked"][:], handle["success"][:])
        assert np.abs(handle["universal_delta"][:]).max() <= 0.3


def test_curve_refuses_equal_eps_and_a_resume_with_other_eps(zoo_model, zoo_inputs, tmp_path):
    model = zoo_model("digits-mosaic")
    np.save(tmp_path / "x.npy", zoo_inputs("digits-mosaic", 2))
    out = tmp_path / "c.h5"
    code, output = run("curve", model, tmp_path / "x.npy", "-o", out, "--eps", "0.1,0.1000000001")
    assert code == 2 and "once" in output and not out.exists()
    (tmp_path / "a_file").write_text("")
    code, output = run("curve", model, tmp_path / "x.npy", "-o", out, "--eps", "0.1", "--max-iter", "5",
                       "--png", tmp_path / "a_file" / "c.png")
    assert code == 2 and "c.png" in output and not out.exists()  # refused before any pass ran
    assert run("curve", model, tmp_path / "x.npy", "-o", out, "--eps", "0.1", "--max-iter", "5")[0] == 0
    code, output = run("curve", model, tmp_path / "x.npy", "-o", out, "--eps", "0.2", "--max-iter", "5", "--resume")
    assert code == 2 and "cannot resume" in output
