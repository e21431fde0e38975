"""Careless commands: an output that is one of the command's inputs, a device, a symlink or a folder is
refused (exit 2, one line) before any work, and an interrupted --overwrite leaves the old file whole."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxattack.cli.main import main

from . import exporters as ex

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--method", "ml-deepfool", "--max-iter", "3", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("safety")
    torch.manual_seed(2)
    model = ex.export_torch(ex.MLP(features=12, labels=5, head="sigmoid"), torch.rand(2, 12), folder / "m.onnx",
                            dynamo=False, opset=17)
    np.save(folder / "x.npy", np.random.default_rng(0).uniform(0, 1, (6, 12)).astype(np.float32))
    results = folder / "r.h5"
    assert invoke("attack", model, folder / "x.npy", "-o", results, *FAST).exit_code == 0
    return model, folder / "x.npy", results


def refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.output


def test_an_output_that_is_an_input_is_refused_and_left_whole(setup, tmp_path):
    model, inputs, results = setup
    before = {path: digest(path) for path in (model, inputs, results)}
    refused(invoke("attack", model, inputs, "-o", model, *FAST, "--overwrite"), "is also an input")
    refused(invoke("attack", model, inputs, "-o", inputs, *FAST, "--overwrite"), "is also an input")
    os.link(results, tmp_path / "same.npz")  # a hard link: another name for the result file
    refused(invoke("export", results, "-o", tmp_path / "same.npz", "--overwrite"), "is also an input")
    refused(invoke("export", results, "-o", results, "--overwrite"), ".npz")
    (tmp_path / "fig.png").symlink_to(results)
    refused(invoke("report", results, "--png", tmp_path / "fig.png"), "is also an input")
    refused(invoke("merge", results, "-o", results, "--overwrite"), "shards")
    assert {path: digest(path) for path in before} == before


def test_devices_folders_and_symlinks_are_refused_before_any_work(setup, tmp_path):
    model, inputs, _ = setup
    refused(invoke("attack", model, inputs, "-o", "/dev/null", *FAST, "--overwrite"), "character device")
    folder = invoke("attack", model, inputs, "-o", tmp_path, *FAST, "--overwrite")  # click's own check
    assert folder.exit_code == 2 and "is a directory" in folder.output
    os.mkfifo(tmp_path / "pipe.h5")
    refused(invoke("attack", model, inputs, "-o", tmp_path / "pipe.h5", *FAST, "--overwrite"), "FIFO")
    target = tmp_path / "elsewhere.h5"
    target.write_bytes(b"precious")
    (tmp_path / "link.h5").symlink_to(target)
    refused(invoke("attack", model, inputs, "-o", tmp_path / "link.h5", *FAST, "--overwrite"), "symbolic link")
    assert target.read_bytes() == b"precious"
    refused(invoke("curve", model, inputs, "-o", tmp_path / "c.h5", "--eps", "0.1", "--png", model), ".png")


def test_an_interrupted_overwrite_leaves_the_old_file_whole(setup, tmp_path):
    model, inputs, results = setup
    out = tmp_path / "r.h5"
    out.write_bytes(results.read_bytes())
    before = digest(out)
    # killed right after the new run's first dataset write
    killed = subprocess.run([sys.executable, "-m", "tests.crash_wrapper", "write:1", "--", "attack", str(model),
                             str(inputs), "-o", str(out), *FAST, "--overwrite", "--max-iter", "4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert digest(out) == before
    finished = invoke("attack", model, inputs, "-o", out, *FAST, "--overwrite", "--max-iter", "4")
    assert finished.exit_code == 0, finished.output
    assert digest(out) != before and sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]  # no leftovers


def test_two_models_that_share_a_stem_keep_two_transfer_groups(setup, tmp_path):
    import h5py

    model, inputs, results = setup
    out = tmp_path / "r.h5"
    out.write_bytes(results.read_bytes())
    (tmp_path / "copy").mkdir()
    twin = tmp_path / "copy" / model.name
    twin.write_bytes(model.read_bytes())
    result = invoke("validate", out, "--model", model, "--model", twin)
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as handle:
        groups = sorted(handle["transfer"])
        assert len(groups) == 2 and all(name.startswith("m-") for name in groups)
        assert {handle[f"transfer/{name}"].attrs["model_path"] for name in groups} == {
            str(model.resolve()), str(twin.resolve())}


def test_a_pass_through_input_named_dot_is_stored_validated_and_exported(tmp_path):
    """HDF5 reads '.' as the group itself: the input is stored as inputs/%2E and found again by name."""
    import h5py
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "."], ["s"]),
             helper.make_node("Sigmoid", ["s"], ["scores"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                           helper.make_tensor_value_info(".", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "dot.onnx")
    rng = np.random.default_rng(1)
    dot = rng.normal(size=(5, 3)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=rng.uniform(0, 1, (5, 4)).astype(np.float32), **{".": dot})
    out = tmp_path / "r.h5"
    assert invoke("attack", tmp_path / "dot.onnx", tmp_path / "in.npz", "-o", out, "--attack-input", "x",
                  *FAST).exit_code == 0
    with h5py.File(out, "r") as handle:
        assert np.array_equal(handle["inputs/%2E"][:], dot)
        stored = handle["success"][:]
    result = invoke("validate", out, "--model", tmp_path / "dot.onnx", "--json")
    assert result.exit_code == 0, result.output
    with h5py.File(out, "r") as handle:  # the same model fed the stored '.' rows: the same verdict
        assert np.array_equal(handle["transfer/dot/success"][:], stored)
