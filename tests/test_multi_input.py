"""Models with several inputs, exported as third parties do (torch's legacy exporter, named inputs):
an image + metadata model, and a features + token-ids model. One input is attacked; the others come
from the same .npz / .h5 by input name, pass through unchanged row by row, and are stored under
inputs/<name>; success is recomputed here from onnxruntime fed from the result file alone."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main
from torch import nn

warnings.filterwarnings("ignore")
LABELS = 5


class ImageWithMetadata(nn.Module):
    """image [N, 1, 8, 8] + metadata [N, 3] -> label logits [N, 5]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.meta = nn.Linear(3, 8)
        self.head = nn.Linear(4 * 16 + 8, LABELS)

    def forward(self, image, metadata):
        h = nn.functional.avg_pool2d(torch.tanh(self.conv(image)), 2).flatten(1)
        return self.head(torch.cat([4 * h, torch.tanh(self.meta(metadata))], dim=1))


class FeaturesWithTokens(nn.Module):
    """features [N, 6] float + token ids [N, 4] int64 -> probabilities [N, 5] (a sigmoid head)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(10, 6)
        self.body = nn.Linear(6, 12)
        self.head = nn.Linear(12, LABELS)

    def forward(self, features, tokens):
        h = torch.tanh(4 * self.body(features) + self.embed(tokens).mean(dim=1).repeat(1, 2))
        return torch.sigmoid(self.head(h) * 3)


def export(model: nn.Module, samples: tuple[torch.Tensor, ...], names: list[str], path: Path) -> Path:
    model.eval()
    axes = {name: {0: "batch"} for name in [*names, "scores"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, samples, str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=["scores"], dynamic_axes=axes)
    return path


@pytest.fixture(scope="module")
def image_model(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("multi")
    path = export(ImageWithMetadata(), (torch.rand(2, 1, 8, 8), torch.rand(2, 3)), ["image", "metadata"],
                  folder / "image_meta.onnx")
    rng = np.random.default_rng(0)
    arrays = {"image": rng.uniform(0, 1, (10, 1, 8, 8)).astype(np.float32),
              "metadata": rng.normal(0, 3, (10, 3)).astype(np.float32)}  # outside [0, 1]: no box applies to it
    return path, arrays


@pytest.fixture(scope="module")
def token_model(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("tokens")
    path = export(FeaturesWithTokens(), (torch.rand(2, 6), torch.randint(0, 10, (2, 4))), ["features", "tokens"],
                  folder / "tokens.onnx")
    rng = np.random.default_rng(1)
    arrays = {"features": rng.uniform(0, 1, (8, 6)).astype(np.float32),
              "tokens": rng.integers(0, 10, (8, 4)).astype(np.int64)}
    return path, arrays


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exit_code == 1:
        raise result.exception  # an internal error: show its traceback
    return result.exit_code, result.output


def attack(model: Path, inputs: Path, out: Path, *extra: str) -> dict:
    code, output = run("attack", str(model), str(inputs), "-o", str(out), "--quiet", "--json", "--overwrite", *extra)
    assert code == 0, output
    return json.loads(output)


def rescored_from_file(model: Path, out: Path, attacked: str, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(success recomputed by onnxruntime from the file alone, the stored success)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        feeds = {name: handle[f"inputs/{name}"][:] for name in handle["inputs"]}
        feeds[attacked] = handle["x_adv"][:]
        scores = session.run(None, feeds)[0]
        reached = ((scores > threshold) == handle["y_target"][:].astype(bool)).all(axis=1)
        return reached & handle["attacked"][:], handle["success"][:]


def test_image_and_metadata_attacked_on_the_image(image_model, tmp_path):
    model, arrays = image_model
    np.savez(tmp_path / "inputs.npz", **arrays)
    out = tmp_path / "r.h5"
    summary = attack(model, tmp_path / "inputs.npz", out, "--attack-input", "image", "--max-iter", "100")
    assert summary["success_rate"] >= 0.8
    recomputed, stored = rescored_from_file(model, out, "image", 0.0)
    assert np.array_equal(recomputed, stored)
    with h5py.File(out, "r") as handle:
        assert handle.attrs["attack_input"] == "image"
        assert np.array_equal(handle["inputs/metadata"][:], arrays["metadata"])  # passed through unchanged
        assert np.array_equal(handle["x"][:], arrays["image"])
        assert float(np.abs(handle["x_adv"][:] - handle["x"][:]).max()) > 0


def test_channels_last_asked_for_keeps_a_bound_graph_as_it_is(image_model, tmp_path):
    """A graph bound to pass-through rows holds per-batch state a channels-last copy would not share (it
    scored every later batch with the probe's metadata): it stays contiguous, said in a note."""
    model, arrays = image_model
    np.savez(tmp_path / "inputs.npz", **arrays)
    out = tmp_path / "r.h5"
    summary = attack(model, tmp_path / "inputs.npz", out, "--attack-input", "image", "--max-iter", "100",
                     "--batch-size", "4", "--memory-format", "channels-last")
    assert summary["success_rate"] >= 0.8
    recomputed, stored = rescored_from_file(model, out, "image", 0.0)
    assert np.array_equal(recomputed, stored)
    with h5py.File(out, "r") as handle:
        notes = json.loads(handle.attrs["notes"])
    assert any(note.startswith("memory format contiguous: channels-last is not applied") for note in notes)


def test_ml_deepfool_from_an_h5_file_and_validate_rescores_from_the_file(image_model, tmp_path):
    model, arrays = image_model
    with h5py.File(tmp_path / "inputs.h5", "w") as handle:
        for name, array in arrays.items():
            handle[name] = array
    out = tmp_path / "r.h5"
    summary = attack(model, tmp_path / "inputs.h5", out, "--attack-input", "image", "--method", "ml-deepfool",
                     "--target", "random")
    assert summary["success_rate"] >= 0.8
    recomputed, stored = rescored_from_file(model, out, "image", 0.0)
    assert np.array_equal(recomputed, stored)
    code, output = run("validate", str(out), "--model", str(model), "--json")
    assert code == 0, output
    with h5py.File(out, "r") as handle:
        transferred = handle[f"transfer/{model.stem}/success"][:]
        assert np.array_equal(transferred, stored)  # the same model, re-scored from the file: the same verdict


def test_the_only_float_input_is_attacked_and_token_ids_pass_through(token_model, tmp_path):
    model, arrays = token_model
    np.savez(tmp_path / "inputs.npz", **arrays)
    out = tmp_path / "r.h5"
    summary = attack(model, tmp_path / "inputs.npz", out, "--target", "hide-single")
    assert summary["success_rate"] >= 0.8
    recomputed, stored = rescored_from_file(model, out, "features", 0.5)
    assert np.array_equal(recomputed, stored)
    with h5py.File(out, "r") as handle:
        assert handle["inputs/tokens"].dtype == np.int64
        assert np.array_equal(handle["inputs/tokens"][:], arrays["tokens"])


def test_token_ids_cannot_be_the_attacked_input(token_model, tmp_path):
    model, arrays = token_model
    np.savez(tmp_path / "inputs.npz", **arrays)
    code, output = run("attack", str(model), str(tmp_path / "inputs.npz"), "-o", str(tmp_path / "r.h5"),
                       "--attack-input", "tokens")
    assert code == 3
    assert output.count("\n") == 1 and "'tokens' is int64" in output and "integer inputs" in output
    assert not (tmp_path / "r.h5").exists()


def test_several_float_inputs_need_attack_input_and_every_input_must_be_given(image_model, tmp_path):
    model, arrays = image_model
    np.savez(tmp_path / "inputs.npz", **arrays)
    code, output = run("attack", str(model), str(tmp_path / "inputs.npz"), "-o", str(tmp_path / "r.h5"))
    assert code == 2 and "--attack-input" in output and "(image, metadata)" in output
    np.savez(tmp_path / "image_only.npz", image=arrays["image"])
    code, output = run("attack", str(model), str(tmp_path / "image_only.npz"), "-o", str(tmp_path / "r.h5"),
                       "--attack-input", "image")
    assert code == 2 and "no array 'metadata'" in output and output.count("\n") == 1
    np.save(tmp_path / "image.npy", arrays["image"])
    code, output = run("attack", str(model), str(tmp_path / "image.npy"), "-o", str(tmp_path / "r.h5"),
                       "--attack-input", "image")
    assert code == 2 and ".npz or .h5" in output
    bad = dict(arrays, metadata=np.where(np.arange(30).reshape(10, 3) == 7, np.nan, arrays["metadata"]))
    np.savez(tmp_path / "nan.npz", **bad)
    code, output = run("attack", str(model), str(tmp_path / "nan.npz"), "-o", str(tmp_path / "r.h5"),
                       "--attack-input", "image")
    assert code == 2 and "metadata row 2" in output
    assert not (tmp_path / "r.h5").exists()


def test_inspect_names_the_attacked_input_and_probes_every_input(image_model, tmp_path):
    model, arrays = image_model
    np.savez(tmp_path / "inputs.npz", **arrays)
    code, output = run("inspect", str(model), "--attack-input", "image", "--probe", str(tmp_path / "inputs.npz"),
                       "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["converts"] is True and report["attack_input"] == "image" and report["fidelity"] < 1e-4


def test_shards_resume_and_merge_keep_the_passthrough_rows(image_model, tmp_path):
    model, arrays = image_model
    np.savez(tmp_path / "inputs.npz", **arrays)
    common = ("--attack-input", "image", "--batch-size", "4", "--max-iter", "30")
    shards = [tmp_path / f"s{i}.h5" for i in range(2)]
    for index, shard in enumerate(shards):
        attack(model, tmp_path / "inputs.npz", shard, "--shard", f"{index}/2", *common)
    code, output = run("merge", *map(str, shards), "-o", str(tmp_path / "merged.h5"))
    assert code == 0, output
    with h5py.File(tmp_path / "merged.h5", "r") as handle:
        assert np.array_equal(handle["inputs/metadata"][:], arrays["metadata"])
    recomputed, stored = rescored_from_file(model, tmp_path / "merged.h5", "image", 0.0)
    assert np.array_equal(recomputed, stored)


def test_estimated_gradients_carry_each_row_s_pass_through_inputs(image_model, tmp_path):
    """Every query of a perturbed row goes to onnxruntime with that row's metadata (a misaligned row
    would estimate another input's gradient); success recomputed from the file alone."""
    model, arrays = image_model
    np.savez(tmp_path / "inputs.npz", **arrays)
    out = tmp_path / "est.h5"
    summary = attack(model, tmp_path / "inputs.npz", out, "--attack-input", "image", "--gradients", "estimate",
                     "--max-iter", "100", "--binary-steps", "4", "--learning-rate", "0.05", "--max-queries", "8000")
    assert summary["gradients"] == "estimated"
    recomputed, stored = rescored_from_file(model, out, "image", 0.0)
    assert np.array_equal(recomputed, stored) and recomputed[stored].size and recomputed.mean() >= 0.8
    with h5py.File(out, "r") as handle:
        queries = handle["queries"][:][handle["attacked"][:]]
        assert (queries > 0).all() and queries.max() <= 8000


class ImageOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16, LABELS)

    def forward(self, image):
        return self.head(nn.functional.avg_pool2d(torch.tanh(self.conv(image)), 2).flatten(1))


def test_validate_feeds_another_model_only_the_inputs_it_takes(image_model, tmp_path):
    model, arrays = image_model
    other = export(ImageOnly(), (torch.rand(2, 1, 8, 8),), ["pixels"], tmp_path / "image_only.onnx")
    np.savez(tmp_path / "inputs.npz", **arrays)
    out = tmp_path / "r.h5"
    attack(model, tmp_path / "inputs.npz", out, "--attack-input", "image", "--method", "ml-deepfool")
    code, output = run("validate", str(out), "--model", str(other), "--json")
    assert code == 0, output
    session = ort.InferenceSession(str(other), providers=["CPUExecutionProvider"])
    with h5py.File(out, "r") as handle:
        scores = session.run(None, {"pixels": handle["x_adv"][:]})[0]
        reached = ((scores > 0) == handle["y_target"][:].astype(bool)).all(axis=1) & handle["attacked"][:]
        assert np.array_equal(handle[f"transfer/{other.stem}/success"][:], reached)


def test_a_byte_values_model_is_refused_with_the_reason(tmp_path):
    """Magika-style: int32 byte values in, label scores out: nothing to perturb along a gradient."""
    from onnx import TensorProto, helper, numpy_helper, save

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["bytes"], ["as_float"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["as_float", "w"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["scores"])],
        "bytes_tagger", [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["batch", 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])], [weights])
    path = tmp_path / "bytes.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    np.save(tmp_path / "x.npy", np.random.default_rng(1).integers(0, 256, (4, 16)).astype(np.int32))
    attack = ["attack", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.h5"), "--range", "0", "255"]
    for command in (["inspect", str(path)], attack):
        code, output = run(*command)
        assert code == 3, output
        assert "'bytes' is int32" in output and "integer inputs" in output
    assert not (tmp_path / "r.h5").exists()


def test_input_names_with_a_slash_stay_one_dataset_through_validate_and_merge(tmp_path):
    """tf2onnx writes scoped names such as 'encoder/meta:0'."""
    path = export(ImageWithMetadata(), (torch.rand(2, 1, 8, 8), torch.rand(2, 3)), ["image", "encoder/meta:0"],
                  tmp_path / "scoped.onnx")
    rng = np.random.default_rng(3)
    arrays = {"image": rng.uniform(0, 1, (6, 1, 8, 8)).astype(np.float32),
              "encoder/meta:0": rng.normal(0, 1, (6, 3)).astype(np.float32)}
    np.savez(tmp_path / "inputs.npz", **arrays)
    shards = [tmp_path / f"s{i}.h5" for i in range(2)]
    for index, shard in enumerate(shards):
        attack(path, tmp_path / "inputs.npz", shard, "--attack-input", "image", "--method", "ml-deepfool",
               "--batch-size", "3", "--shard", f"{index}/2")
    code, output = run("merge", *map(str, shards), "-o", str(tmp_path / "merged.h5"))
    assert code == 0, output
    code, output = run("validate", str(tmp_path / "merged.h5"), "--model", str(path))
    assert code == 0, output
    with h5py.File(tmp_path / "merged.h5", "r") as handle:
        assert list(handle["inputs"]) == ["encoder%2Fmeta:0"]
        assert np.array_equal(handle["inputs/encoder%2Fmeta:0"][:], arrays["encoder/meta:0"])
        assert np.array_equal(handle[f"transfer/{path.stem}/success"][:], handle["success"][:])


def test_inspect_asks_which_input_when_several_could_be_perturbed(image_model):
    model, _ = image_model
    code, output = run("inspect", str(model))
    assert code == 2 and "--attack-input" in output and output.count("\n") == 1
